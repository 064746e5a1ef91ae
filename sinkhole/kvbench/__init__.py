"""kv-bench: KV caches at the same bytes on the long-context tasks people compare caches with.

`sinkhole.long_tasks` builds the prompts (passkey, needle-in-a-haystack grid, RULER-style
multi-key and variable tracking, copy, perplexity), `sinkhole.kvbench.snapkv` is the token-eviction
baseline (SnapKV), `sinkhole.kvbench.methods` builds every cache at one byte budget and
`sinkhole.kvbench.bench` runs them cell by cell, resumably (`sinkhole kv-bench`);
`sinkhole.kvbench.head_loss` measures what each KV head's compression costs, with the same forwards.
"""

# SnapKV's defaults (kvpress's SnapKVPress: kernel 5; a 32-query window fits a short question), here so
# that the CLI reads them without importing torch.
SNAP_WINDOW, SNAP_KERNEL = 32, 5
# The loss deltas' calibration samples (sinkhole.kvbench.head_loss): prompt tokens, ppl samples
LOSS_LENGTH, LOSS_SAMPLES = 2048, 6
