"""Shared pieces of the fault matrix (tests/test_faults*.py): a saved tiny model with a real
tokenizer, a folder of input files, and the contract every bad input must meet."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from conftest import tiny_llama

WORDS = "the a of to and is in it you that was for on are with as be at one have this from".split()


def save_tiny(d: Path, max_position_embeddings: int = 64, **overrides) -> Path:
    """A tiny Llama (config `overrides`) with a word-level tokenizer, saved as a Hugging Face model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tok.save_pretrained(d)
    tiny_llama(max_position_embeddings=max_position_embeddings, **overrides).save_pretrained(d)
    return d


def profile_dict(pinned_slots: int = 1, positions=(0,), name: str = "tiny") -> dict:
    return {
        "schema": "sinkhole.profile/1",
        "model": {"name": name, "weights_id": ""},
        "sink_rule": {"positions": list(positions), "token_texts": [], "description": "test"},
        "sink_tokens": [],
        "spike_channels": [],
        "step_up_layers": [],
        "step_down_layers": [],
        "sink_heads": [],
        "pinned_slots": pinned_slots,
        "prompts": {"source": "test", "count": 1},
    }


def make_inputs(d: Path, tiny: Path) -> dict[str, str]:
    """Input files (and bad paths) the matrix substitutes for placeholders in argv."""
    d.mkdir(parents=True, exist_ok=True)
    text = " ".join(WORDS * 40)
    files = {
        "PROMPT": ("prompt.txt", "the one of you is in it"),
        "SUITE": ("suite.txt", "the one of you\nis in it that\nwas for on are\n"),
        "JSONL": ("suite.jsonl", '{"prompt": "the one"}\n{"prompt": "of you"}\n'),
        "TEXT": ("text.txt", text),
        "EMPTY": ("empty.txt", "   \n"),
        "BINARY": ("binary.txt", b"\xff\xfe\x00\x81" * 10),
        "BADJSONL": ("bad.jsonl", '{"prompt": "x"}\n{not json\n'),
        "CSV": ("suite.csv", "the one\n"),
        "PROFILE": ("profile.json", json.dumps(profile_dict())),
        "BIGPROFILE": ("big.json", json.dumps(profile_dict(pinned_slots=10**9))),
        "P100": ("p100.json", json.dumps(profile_dict(pinned_slots=100, positions=range(100)))),
        "P5000": ("p5000.json", json.dumps(profile_dict(positions=(5000,)))),
        "NOTPROFILE": ("notprofile.json", '{"schema": "other"}'),
        "ROFILE": ("readonly.json", "{}"),
    }
    subst = {"TINY": str(tiny)}
    for key, (name, content) in files.items():
        p = d / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        subst[key] = str(p)
    os.chmod(d / "readonly.json", 0o444)
    (d / "adir").mkdir(exist_ok=True)
    rodir = d / "rodir"
    rodir.mkdir(exist_ok=True)
    os.chmod(rodir, 0o555)
    subst.update(
        DIR=str(d / "adir"),
        RODIR=str(rodir),
        RO_OUT=str(rodir / "out.json"),
        PROC="/proc/sinkhole-test/out.json",
        PROCDIR="/proc/sinkhole-test-run",
        UNDERFILE=str(d / "prompt.txt" / "out.json"),
        MISSING=str(d / "missing.txt"),
        MISSINGJSON=str(d / "missing.json"),
    )
    return subst


def tree_hash(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (inputs must never change)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_clean_error(code: int, err: str, message: str | None = None) -> None:
    """Exit code 2, exactly one final 'sinkhole: error:' line, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(("sinkhole: error: ", "usage:", "sinkhole ")) or "error:" in lines[-1], err
    assert err.count("sinkhole: error") <= 1, err
    if message is not None:
        assert message.lower() in err.lower(), err


def assert_one_line(err: Exception, message: str | None = None) -> None:
    text = str(err)
    assert text and "\n" not in text, repr(text)
    if message is not None:
        assert message.lower() in text.lower(), text


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
