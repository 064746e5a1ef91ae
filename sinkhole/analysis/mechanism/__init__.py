"""The mechanism of "The Spike, the Sparse and the Sink" (Sun, Canziani, LeCun, Zhu, 2026), measured.

One small module per analysis, each a set of pure functions on arrays whose definitions live in
its docstring:
    lifecycle      rise / plateau / fall of a spike, block by block (2L blocks)
    channels       the spike channels, their plateau values and ratio constancy
    amplifier      the activation regime and the quadratic amplifier U_k of the step-up FFN
    normalization  sparsity and cosine structure of post-norm spike vectors
    sink_keys      effective dimension of sink keys, sink heads, query alignment
    vocab_sweep    every vocabulary token alone at position 0
    interventions  perplexity with the spike channels or the sink removed
`gather` is the one forward pass with extra hooks; `runner.run_mechanism` assembles the JSON-ready
`mechanism` dict from two passes over a prompt set.
"""
