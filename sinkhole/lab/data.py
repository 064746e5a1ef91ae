"""Synthetic token streams, generated on the fly from a seed (nothing is downloaded or stored).

Bigram-Backcopy (Guo et al. 2024, "Active-Dormant Attention Heads"): a Markov chain over ordinary
tokens, interrupted by trigger tokens. After a trigger the next token copies the token just before
the trigger; otherwise it is drawn from the bigram transition of the previous token. Predicting a
copy needs an attention head that, at a trigger, reads the position before it; at every other
query that head has nothing to do, which is the situation in which sinks appear (the head parks
its attention on a fixed token). Zipf: independent tokens with Zipf frequencies; no head ever has
anything to read (in our one run, no sink grew: see docs/lab.md). Text: characters of Python's own
documentation (`pydoc_data.topics`, shipped with CPython, so offline), in random windows; the last 5%
of the text is held out for probing (batch indices >= HELD_OUT_INDEX).

Vocabulary: id 0 is the start token <s> (BOS), ids 1..n_triggers are triggers, the rest ordinary.
With `bos=False` a sequence simply starts with its first ordinary token (the same streams, shifted
by one), so "with / without a fixed start token" changes one thing.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

BOS = 0
TASKS = ("bigram-backcopy", "zipf", "text")
HELD_OUT_INDEX = 10**6  # batches from here on are the probe batches (for text: from the held-out tail)


@dataclass(frozen=True)
class DataConfig:
    task: str = "bigram-backcopy"
    vocab_size: int = 64
    seq_len: int = 64  # tokens per training sequence, the start token included
    bos: bool = True  # a fixed start token at position 0
    n_triggers: int = 3
    trigger_prob: float = 0.15  # chance that an ordinary token is followed by a trigger
    bigram_alpha: float = 0.1  # Dirichlet concentration of each bigram row: small = peaked, learnable
    zipf_exponent: float = 1.0

    def __post_init__(self):
        if self.task == "text" and self.vocab_size < 1 + len(text_alphabet()):
            object.__setattr__(self, "vocab_size", 1 + len(text_alphabet()))  # the text's characters decide

    def to_dict(self) -> dict:
        return asdict(self)


class TokenStream:
    """Batches of token ids (B, seq_len), reproducible from `seed`.

    The transition matrix comes from `seed` alone, so every variant sees the same language; batch
    n comes from (seed, n), so two variants with equal seeds see equal batches.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        if cfg.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
        self.cfg, self.seed = cfg, seed
        g = torch.Generator().manual_seed(seed)
        if cfg.task == "text":
            self.first, self.ids = 1, text_ids()
            return
        self.first = 1 + cfg.n_triggers  # the first ordinary token id
        n_ord = cfg.vocab_size - self.first
        if n_ord < 2:
            raise ValueError("vocab_size leaves fewer than 2 ordinary tokens")
        alpha = torch.full((n_ord,), cfg.bigram_alpha)
        # Dirichlet rows from normalised Gamma draws (torch's Dirichlet takes no generator).
        self.bigram = torch._standard_gamma(alpha.expand(n_ord, n_ord).contiguous(), generator=g)
        self.bigram = self.bigram / self.bigram.sum(-1, keepdim=True)  # (n_ord, n_ord) rows sum to 1
        ranks = torch.arange(1, n_ord + 1, dtype=torch.float32)
        self.zipf = ranks**-cfg.zipf_exponent / (ranks**-cfg.zipf_exponent).sum()

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        """Batch number `index`: (batch_size, seq_len) int64."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        n = cfg.seq_len - 1 if cfg.bos else cfg.seq_len
        # Both variants draw seq_len - 1 body tokens; without BOS one more is drawn at the end.
        body = self._body(batch_size, cfg.seq_len, g, index)[:, :n]
        if cfg.bos:
            body = torch.cat([torch.full((batch_size, 1), BOS, dtype=torch.long), body], 1)
        return body

    def _body(self, B: int, n: int, g: torch.Generator, index: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.task == "text":
            return self._text(B, n, g, index >= HELD_OUT_INDEX)
        if cfg.task == "zipf":
            return self.first + torch.multinomial(self.zipf.expand(B, -1), n, replacement=True, generator=g)
        out = torch.empty(B, n, dtype=torch.long)
        prev = torch.multinomial(self.zipf.expand(B, -1), 1, generator=g)[:, 0]  # ordinary, 0-based
        out[:, 0] = prev + self.first
        before_trigger = out[:, 0].clone()
        for t in range(1, n):
            last = out[:, t - 1]
            is_trig = (last >= 1) & (last < self.first)
            nxt = torch.multinomial(self.bigram[prev], 1, generator=g)[:, 0] + self.first
            trig = 1 + torch.randint(cfg.n_triggers, (B,), generator=g)
            coin = torch.rand(B, generator=g) < cfg.trigger_prob
            # After a trigger: copy the token before it. Else: a trigger (coin) or a bigram draw.
            tok = torch.where(is_trig, before_trigger, torch.where(coin, trig, nxt))
            out[:, t] = tok
            ordinary = tok >= self.first
            before_trigger = torch.where(ordinary, tok, before_trigger)
            prev = torch.where(ordinary, tok - self.first, prev)
        return out

    def _text(self, B: int, n: int, g: torch.Generator, held_out: bool) -> torch.Tensor:
        split = int(len(self.ids) * 0.95)  # the last 5% of the text only in held-out batches
        lo, hi = (split, len(self.ids) - n) if held_out else (0, split - n)
        starts = lo + torch.randint(hi - lo, (B,), generator=g)
        return self.ids[starts[:, None] + torch.arange(n)]

    def predictable(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: positions whose token is a copy (the previous token is a trigger); none in text."""
        if self.cfg.task == "text":
            return torch.zeros_like(ids, dtype=torch.bool)
        prev = torch.zeros_like(ids)
        prev[:, 1:] = ids[:, :-1]
        return (prev >= 1) & (prev < self.first)


@functools.cache
def text_alphabet() -> str:
    """The characters of the text task, sorted: character i has token id i + 1 (0 is <s>)."""
    return "".join(sorted(set(_text())))


@functools.cache
def text_ids() -> torch.Tensor:
    index = {c: i + 1 for i, c in enumerate(text_alphabet())}
    return torch.tensor([index[c] for c in _text()], dtype=torch.long)


def _text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


class IdTokenizer:
    """What the probe needs of a tokenizer: token ids decode to '<s>', 'T1'.. (triggers), 'a12'.."""

    pad_token_id = BOS
    eos_token = None
    chat_template = None

    def __init__(self, n_triggers: int, text: bool = False):
        self.n_triggers, self.text = n_triggers, text

    def decode(self, ids) -> str:
        if self.text:
            return "".join("<s>" if i == BOS else text_alphabet()[i - 1] for i in ids)
        return "".join("<s>" if i == BOS else f"T{i}" if i <= self.n_triggers else f"a{i}" for i in ids)
