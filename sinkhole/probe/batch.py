"""Left padding: the one batch layout of every forward sinkhole runs over several sequences.

Sequences are padded on the left so that their last tokens line up (the probe keeps logits of the
last position only). Padding is masked as keys by the attention mask built from `valid`, and
position ids count only real tokens (`position_ids`), so a padded sequence's numbers are those of
the sequence alone (tests/test_probe.py checks it).
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
