"""The mechanism of "The Spike, the Sparse and the Sink" (Sun, Canziani, LeCun, Zhu, 2026), measured.

One small module per analysis, each a set of pure functions on arrays whose definitions live in
its docstring:
    lifecycle      rise / plateau / fall of a spike, block by block (2L blocks)
    channels       the spike channels, their plateau values and ratio constancy
    amplifier      the activation regime and the quadratic amplifier U_k of the step-up FFN
    normalization  sparsity and cosine structure of post-norm spike vectors
    sink_keys      effective dimension of sink keys, sink heads, query alignment
    vocab_sweep    scores and summary of every vocabulary token alone at position 0
Each returns its section of the typed result (sinkhole.results.mechanism). Nothing here runs
a model: the forwards (the gathering pass, the interventions, the vocabulary sweep's forwards) and
`run_mechanism`, which assembles the `MechanismResult` from two passes over a prompt set, live in
`sinkhole.experiments`.
"""
