"""Experiments: everything that runs a model beyond the probe's one measuring forward.

The data flows one way: models (load) -> probe (one forward with hooks -> compact `Capture`) ->
analysis (pure functions on arrays) -> report (one typed structure, then renderers). The
experiments sit beside the probe: they run extra forwards (a second gathering pass, perplexity
under an intervention, a vocabulary sweep, streaming scores), built on
the probe's primitives (`sinkhole.probe.hooks` for every temporary change to a model,
`sinkhole.probe.batch` for left padding, `sinkhole.probe.recorder` for attention taps), and hand
arrays to the pure analyses. Nothing in `sinkhole.analysis` runs a model.

    gather         the mechanism's second forward: exactly the tensors its analyses need
    mechanism      the mechanism section: two passes over a prompt set, then the pure analyses
    interventions  perplexity with the spike channels or the sink taken away
    vocab_sweep    every vocabulary token alone at position 0 (its summary is pure: analysis)
    perplexity     the one perplexity: summed NLL of a sequence, perplexity of a set of sequences
    streaming      per-head streaming scores of a profile (a recorder tap)
"""
