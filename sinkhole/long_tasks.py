"""kv-bench's tasks: synthetic long-context prompts built offline, seeded, with the answer at a known place.

Text only (no torch, no model), below kv-bench and the profile's needle scores, which both build their
prompts here (sinkhole.experiments.head_scores.needle_prompts: the calibration half, seeds from 0).

Every task builds a context of exactly `length` token ids and the `answer` ids the model must produce
next. Prompts are put together from separately tokenized pieces (lead, intro, haystack, needle,
question), so the answer's ids sit in the context exactly where the sample says (`where`), and the
generator checks that they occur there and nowhere else (redrawing the secret when the haystack
happens to hold it).

Haystack: `sinkhole.text.pydoc_text(half=1)`, the second half of `pydoc_data.topics`' sorted keys
(Python's own documentation, on every machine). The streaming scores a shipped profile ranks heads by
are calibrated on other text (docs/cache.md says which); the task seeds start at SEED_BASE, far from
the calibration streams' small seeds, so no task prompt can be a calibration prompt.

Tasks (RULER, Hsieh et al. 2024; passkey from Mohtashami & Jaggi 2023):
    passkey   a 5-digit pass key in the haystack at a random depth; exact match
    niah      a 7-digit "special magic number" at each depth of a grid (0% = right after the intro,
              100% = right before the question); exact match
    multikey  4 needles "the special magic number for <word> is: <n>", one asked; exact match
    vartrack  variable chains (VAR A = n, VAR B = VAR A, VAR C = VAR B, plus a distractor chain);
              asked the value of the last variable of one chain; exact match
    copy      32 random tokens at a random depth; the context ends with the span's first token and
              the answer is the other 31 (induction copy, `stream --recall`'s metric); token accuracy
    ppl       `length` tokens of text, then the next PPL_TOKENS tokens; perplexity of those

Exact match is scored teacher-forced: every answer token is the model's top-1 prediction, which is
what greedy decoding of the answer would produce.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from sinkhole.errors import SinkholeError
from sinkhole.text import HELD_OUT_HALF

TASKS = ("passkey", "niah", "multikey", "vartrack", "copy", "ppl")
METRICS = {  # task -> how a sample is scored
    "passkey": "exact",
    "niah": "exact",
    "multikey": "exact",
    "vartrack": "exact",
    "copy": "token",
    "ppl": "ppl",
}
SEED_BASE = 1000  # task seeds are SEED_BASE + i: never the small seeds the calibration streams use
COPY_SPAN, PPL_TOKENS, MULTIKEY_NEEDLES = 32, 128, 4
ANSWER_ROOM = PPL_TOKENS  # tokens past a sample's length that no task's answer exceeds (ppl's is the longest)
HAYSTACK = "pydoc_data.topics, second half of the sorted keys (sinkhole.text.pydoc_text(half=1))"
WORDS = (
    "apple anchor badger banjo candle cactus dolphin dragon eagle engine falcon fiddle garden glacier harbor "
    "helmet island jacket kettle ladder lantern magnet meadow needle oyster paddle pepper pillow quartz rabbit "
    "saddle salmon teapot thistle tunnel umbrella velvet violin walnut wagon yogurt zipper"
).split()


@dataclass(frozen=True)
class Sample:
    """One prompt: `ids` (exactly `length` ids) followed by `answer` (the ids to predict).

    where: index in `ids` of the answer's own occurrence (the needle's value; the copied span's
    second token), -1 for ppl. depth: where the needle sits, 0..1 of the haystack (None for ppl)."""

    task: str
    length: int
    depth: float | None
    seed: int
    ids: list[int]
    answer: list[int]
    where: int

    @property
    def metric(self) -> str:
        return METRICS[self.task]

    def meta(self) -> dict:
        d = asdict(self)
        for k in ("ids", "answer"):
            d.pop(k)
        return d


class Encoder:
    """The tokenizer's ids of text pieces (no special tokens) and of the haystack, computed once."""

    def __init__(self, tokenizer, half: int = HELD_OUT_HALF):
        from sinkhole.text import pydoc_text

        self.tokenizer = tokenizer
        self.lead = list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS, when it adds one
        # kv-bench reads the held-out half; the profile's needle scores the calibration half
        self.haystack = self(pydoc_text(half=half))
        self.pool = sorted(set(self.haystack))  # real tokens, for the copy task's random spans

    def __call__(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def occurrences(ids: list[int], part: list[int]) -> list[int]:
    """Every index i with ids[i : i + len(part)] == part."""
    n = len(part)
    first = part[0]
    return [i for i in range(len(ids) - n + 1) if ids[i] == first and ids[i : i + n] == part]


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _assemble(enc: Encoder, length: int, rng, intro: str, needles, question: list[int]):
    """lead + intro + haystack with `needles` [(depth, ids)] inserted + question: exactly `length` ids.

    Returns (ids, starts) with starts[i] the index of needle i's first id."""
    head = enc.lead + enc(intro)
    fill = length - len(head) - sum(len(n) for _, n in needles) - len(question)
    if fill < 16:
        raise SinkholeError(f"{length} tokens cannot hold this task's text: use longer --lengths")
    if len(enc.haystack) < fill + 1:
        raise SinkholeError(f"the haystack has {len(enc.haystack)} tokens; {length} asked")
    start = rng.randrange(0, len(enc.haystack) - fill)
    hay = enc.haystack[start : start + fill]
    ids, starts, at = list(head), [], 0
    for depth, needle in sorted(needles, key=lambda x: x[0]):
        cut = round(depth * fill)
        ids += hay[at:cut]
        at = cut
        starts.append((depth, len(ids)))
        ids += needle
    ids += hay[at:] + question
    assert len(ids) == length
    order = [s for _, s in sorted(starts)]
    return ids, order


def _checked(task, length, depth, seed, ids, answer, where) -> Sample | None:
    """The sample when its answer occurs exactly once, at `where`; None to redraw."""
    if occurrences(ids, answer) != [where]:
        return None
    return Sample(task, length, depth, seed, ids, answer, where)


def passkey(enc, length, depth, seed, rng):
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
    value = enc(" " + _number(rng, 5))
    needle = enc("\nThe pass key is") + value + enc(". Remember it.\n")
    q = enc("\n\nWhat is the pass key? The pass key is")
    ids, (s,) = _assemble(enc, length, rng, intro, [(depth, needle)], q)
    return _checked("passkey", length, depth, seed, ids, value, s + len(enc("\nThe pass key is")))


def niah(enc, length, depth, seed, rng):
    intro = "A special magic number is hidden within the following text. Make sure to memorize it.\n\n"
    value = enc(" " + _number(rng, 7))
    pre = enc("\nThe special magic number is")
    needle = pre + value + enc(".\n")
    q = enc("\n\nWhat is the special magic number mentioned in the text? The special magic number is")
    ids, (s,) = _assemble(enc, length, rng, intro, [(depth, needle)], q)
    return _checked("niah", length, depth, seed, ids, value, s + len(pre))


def multikey(enc, length, depth, seed, rng):
    intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n\n"
    keys = rng.sample(WORDS, MULTIKEY_NEEDLES)
    values = set()
    while len(values) < MULTIKEY_NEEDLES:
        values.add(_number(rng, 7))
    depths = [depth] + [rng.random() for _ in range(MULTIKEY_NEEDLES - 1)]
    needles, pres = [], []
    for k, v, d in zip(keys, sorted(values), depths):
        pre = enc(f"\nOne of the special magic numbers for {k} is:")
        needles.append((d, pre + enc(" " + v) + enc(".\n")))
        pres.append(pre)
    asked = keys[0]
    value = enc(" " + sorted(values)[0])
    q = enc(f"\n\nWhat is the special magic number for {asked}? The special magic number for {asked} is:")
    ids, starts = _assemble(enc, length, rng, intro, needles, q)
    rank = sorted(range(len(needles)), key=lambda i: (needles[i][0], i)).index(0)
    return _checked("multikey", length, depth, seed, ids, value, starts[rank] + len(pres[0]))


def _var(rng) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def vartrack(enc, length, depth, seed, rng):
    """Two chains of 3 variables; the asked chain's root sits at `depth`, its hops and the
    distractor chain at random depths after... anywhere after the root (a hop must follow its source)."""
    intro = "Memorize and track the chain of variable assignments hidden in the following text.\n\n"
    names = set()
    while len(names) < 6:
        names.add(_var(rng))
    a, b, c, x, y, z = sorted(names, key=lambda s: rng.random())
    v1, v2 = _number(rng, 5), _number(rng, 5)
    while v2 == v1:
        v2 = _number(rng, 5)
    value = enc(" " + v1)
    root_pre = enc(f"\nVAR {a} =")
    d1 = sorted(depth + (1 - depth) * rng.random() for _ in range(2))
    d2 = sorted(rng.random() for _ in range(3))
    needles = [
        (depth, root_pre + value + enc(".\n")),
        (d1[0], enc(f"\nVAR {b} = VAR {a}.\n")),
        (d1[1], enc(f"\nVAR {c} = VAR {b}.\n")),
        (d2[0], enc(f"\nVAR {x} = {v2}.\n")),
        (d2[1], enc(f"\nVAR {y} = VAR {x}.\n")),
        (d2[2], enc(f"\nVAR {z} = VAR {y}.\n")),
    ]
    q = enc(f"\n\nQuestion: what is the value of VAR {c}? Answer: VAR {c} =")
    ids, starts = _assemble(enc, length, rng, intro, needles, q)
    rank = sorted(range(len(needles)), key=lambda i: (needles[i][0], i)).index(0)
    return _checked("vartrack", length, depth, seed, ids, value, starts[rank] + len(root_pre))


def copy(enc, length, depth, seed, rng):
    span = [rng.choice(enc.pool) for _ in range(COPY_SPAN)]
    ids, (s,) = _assemble(enc, length, rng, "", [(depth, span)], span[:1])
    return _checked("copy", length, depth, seed, ids, span[1:], s + 1)


def ppl(enc, length, depth, seed, rng):
    body = length - len(enc.lead)
    if len(enc.haystack) < body + PPL_TOKENS + 1:
        raise SinkholeError(f"the haystack has {len(enc.haystack)} tokens; {length} asked")
    start = rng.randrange(0, len(enc.haystack) - body - PPL_TOKENS)
    ids = enc.lead + enc.haystack[start : start + body]
    return Sample("ppl", length, None, seed, ids, enc.haystack[start + body : start + body + PPL_TOKENS], -1)


BUILDERS = dict(passkey=passkey, niah=niah, multikey=multikey, vartrack=vartrack, copy=copy, ppl=ppl)


def grid_depths(n: int) -> list[float]:
    """NIAH depths: n evenly spaced shares of the haystack, 0 and 1 included (n = 1: the middle)."""
    return [0.5] if n == 1 else [round(i / (n - 1), 4) for i in range(n)]


def make_samples(
    enc: Encoder, task: str, length: int, depths: int = 5, seeds: int = 3, seed_base: int = SEED_BASE
) -> list[Sample]:
    """The task's samples at `length`: `seeds` of them (niah: `seeds` per depth of the grid).

    Deterministic: each sample's generator is seeded by (task, length, depth, seed_base + i); a sample
    whose answer also occurs in the haystack is redrawn from the same generator. kv-bench's seeds
    start at SEED_BASE; the profile's calibration needles use seed_base 0 and the other text half."""
    if task not in BUILDERS:
        raise SinkholeError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    out = []
    for i in range(seeds):
        seed = seed_base + i
        for d in grid_depths(depths) if task == "niah" else [None]:
            rng = random.Random(f"{task}:{length}:{d}:{seed}")
            depth = d if d is not None else round(rng.uniform(0.05, 0.95), 4)
            for _ in range(100):
                s = BUILDERS[task](enc, length, depth, seed, rng)
                if s is not None:
                    break
            else:  # pragma: no cover - 100 draws of a 5-digit secret all in the haystack
                raise SinkholeError(f"could not place a unique {task} answer in {length} tokens")
            out.append(s)
    return out
