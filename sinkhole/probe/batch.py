"""Left padding: the one batch layout of every forward sinkhole runs over several sequences.

Sequences are padded on the left so that their last tokens line up (the probe keeps logits of the
last position only). Padding is masked as keys by the attention mask built from `valid`, and
position ids count only real tokens (`position_ids`), so a padded sequence's numbers are those of
the sequence alone (tests/test_probe.py checks it). `forward_kwargs` builds the arguments of every
such forward (the probe's, the mechanism's gathering pass, the token mask's, benchmarks/eval.py's),
so that every pass places tokens the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> input_ids (B, T) long, left-padded with `pad_id`, and valid (B, T) bool (False on padding)."""
    T, B = max(len(s) for s in seqs), len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, T - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        valid[b, T - len(s) :] = True
    return ids, valid


def position_ids(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, T) bool -> position ids (B, T) long: 0, 1, ... over the real tokens, 0 on the padding."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token id, 0 when it has none (padding is masked: its id never matters)."""
    return getattr(tokenizer, "pad_token_id", None) or 0


def forward_kwargs(input_ids: torch.Tensor, valid: torch.Tensor, device) -> dict:
    """The keyword arguments of a batched measuring forward: ids, the padding mask, no KV cache and
    the last position's logits only ([T, vocab] logits would dominate memory).

    Position ids are passed only when there is padding: without it the model counts its own, which
    for models with offset positions (RoBERTa-style, starting past the padding index) is not 0..T-1.
    """
    kwargs = dict(
        input_ids=input_ids.to(device),
        attention_mask=valid.long().to(device),
        use_cache=False,
        logits_to_keep=1,
    )
    if not bool(valid.all()):
        kwargs["position_ids"] = position_ids(valid).to(device)
    return kwargs
