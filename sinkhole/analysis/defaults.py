"""The definitions' default parameters (defined in sinkhole.analysis.core), in a module that imports
nothing, so the CLI can show them in `--help` without loading numpy or torch."""

DEFAULT_THRESHOLD = 10.0  # spike score, x the median token
DEFAULT_EPSILON = 0.3  # attention mass that counts as sinking a head
DEFAULT_MIN_SINK_RATE = 0.5  # share of (layer, head) pairs a sink token must hold
