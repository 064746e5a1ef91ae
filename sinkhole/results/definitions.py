"""What every number of a report means, as text: `DEFINITIONS`.

sinkhole.analysis.core computes these numbers and carries this text as its docstring (`core.__doc__`),
and the HTML page's Definitions dialog shows it, so the page and the code cannot disagree. The text
lives here, with the result types, because renderers import results/ only.
"""

DEFINITIONS = """The definitions. Every number sinkhole reports about spikes and sinks is computed here, from a
`Capture`, by pure functions on its arrays. The README repeats these definitions.

Notation: L decoder layers (0-based), H query heads, T tokens. h_l[t] is the output of decoder
layer l at token t (the residual stream after that layer; *not* the final-normed state that
`output_hidden_states` reports for the last layer). A_{l,h}[t, k] is the attention probability
from query t to key k.

Spikes (massive activations)
- peak norm:  N[t] = max_l ||h_l[t]||_2.
- spike score: S[t] = N[t] / median_s N[s] (the original sinkhole's score).
- a prompt's spike score: max_t S[t] (the eval rows' `spike_score`).
- spike token: S[t] > threshold (default 10).
- top value: the signed h_l[t, c] of largest |.| over layers l and channels c; reported with its
  layer and channel (Sun et al. 2024, "Massive Activations in LLMs").
- step-up / step-down layers of token t: with n_{-1} = ||h_{-1}[t]||, the residual entering layer 0
  (hidden_states[0]: the token embedding plus any position embedding), and n_l = ||h_l[t]||, the
  layers whose output raises (step-up) or lowers (step-down) the token's residual norm by at least
  STEP_FRACTION (10%) of its peak norm N[t]: n_l - n_{l-1} >= 0.1 N[t], resp. n_{l-1} - n_l >= 0.1 N[t].
  Rise = first step-up layer, fall = last step-down layer, plateau between.
- spike channels of token t: at the top value's layer l*, the channels c (among the K = 8 largest
  of token t) with |h_{l*}[t, c]| > threshold * median_s max_c' |h_{l*}[s, c']|, i.e. entries
  `threshold` times larger than the typical token's largest entry at that layer.
- channel order: everywhere (analyze, mechanism, eval) a token's spike channels by descending
  |h_{l*}[t, c]|; a set pooled over tokens by mean rank in those lists (absent = last), then id.

Sinks (Gu et al., "When Attention Sink Emerges", ICLR 2025)
- attention mass of key k in (l, h): alpha_{l,h}(k) = mean over queries t >= k of A_{l,h}[t, k].
- a token's attention mass: mean over all (l, h) of alpha_{l,h}(k).
- its sink rate: share of (l, h) with alpha_{l,h}(k) > epsilon (default 0.3).
- sink token: sink rate >= min_sink_rate (default 0.5: more than epsilon of the attention in most
  heads). The token with the largest attention mass is always reported as `sinks.top`.

Hybrid models: only attention layers carry alpha; linear-attention / SSM / conv layers (the
  report's `layers.kinds`) are left out of every attention average above (their rows are null).

Learned sinks (gpt-oss: a per-head sink logit that takes probability and returns no value)
- learned sink share of (l, h): mean over queries t of the probability row t gives the learned
  sink (what no key receives: 1 - sum_k A_{l,h}[t, k]). Reported per layer and head, beside the
  token sinks' alpha.

Together
- overlap: Jaccard |spikes ∩ sinks| / |spikes ∪ sinks| of the two position sets (null if both empty).
- KV impact: sink_attention_share = share of all attention probability (summed over layers, heads
  and queries) that lands on sink tokens' KV slots; sink_slot_share = sink tokens / T.
"""
