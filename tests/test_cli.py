"""`sinkhole analyze` end to end on a tiny local model directory, and every bad input the issue lists:
one line on stderr, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_llama

from sinkhole.cli.main import main

WORDS = "the a of to and is in it you that was for on are with as be at one have this from".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama with a real (word-level) tokenizer and a 16-token context."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tok.save_pretrained(d)
    tiny_llama(max_position_embeddings=16).save_pretrained(d)
    return d


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_tiny_model_writes_reports(tiny_dir, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "analyze",
        "--model",
        str(tiny_dir),
        "--prompt",
        "the one of you is in it",
        "--json",
        str(tmp_path / "r.json"),
        "--output",
        str(tmp_path / "r.html"),
    )
    assert code == 0, err
    assert "Spike tokens" in out and "Sink tokens" in out and "KV impact" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema"] == "sinkhole.report/1" and [t["text"] for t in d["tokens"]][:2] == ["the", "one"]
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "smolm2-135m", "--prompt", "hi"], "did you mean 'smollm2-135m'"),
        (["--model", "./no/such/dir", "--prompt", "hi"], "unknown model"),
        (["--model", "TINY", "--prompt", "   "], "empty prompt"),
        (["--model", "TINY"], "give a prompt"),
        (["--model", "TINY", "--prompt-file", "/no/such/file.txt"], "prompt file not found"),
        (["--model", "TINY", "--prompt", "hi", "--dtype", "float8"], "unknown dtype 'float8'"),
        (["--model", "TINY", "--prompt", "hi", "--device", "tpu"], "unknown device 'tpu'"),
        (["--model", "TINY", "--prompt", "hi", "--device", "cuda"], "needs CUDA"),
        (["--model", "TINY", "--prompt", " ".join(WORDS)], "tokens, longer than"),
        (["--model", "TINY", "--prompt", "hi", "--chat"], "no chat template"),
        (["--model", "BAD_GGUF", "--prompt", "hi"], "cannot read GGUF file"),
        (["--model", "MISSING.gguf", "--prompt", "hi"], "GGUF file not found"),
        (["--model", "ENCODER", "--prompt", "hi"], "is not a causal LM"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, tiny_dir, tmp_path, capsys, monkeypatch):
    import torch

    if "--device" in argv and argv[argv.index("--device") + 1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("SINKHOLE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    enc = tmp_path / "encoder"
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(enc)
    subst = {
        "TINY": str(tiny_dir),
        "BAD_GGUF": str(bad),
        "MISSING.gguf": str(tmp_path / "missing.gguf"),
        "ENCODER": str(enc),
    }
    argv = [subst.get(a, a) for a in argv]
    code, out, err = run_cli(capsys, "analyze", *argv)
    assert code == 2
    assert message in err, err
    # status lines (e.g. "converting ...") may come first; the error is exactly one final line
    assert err.endswith("\n") and err.splitlines()[-1].startswith("sinkhole: error: ")
    assert err.count("sinkhole: error") == 1 and "Traceback" not in err
    if "longer than" in message:
        assert "context of 16" in err


def test_entry_point_in_a_real_process(tmp_path):
    """The installed console script: exit code 2 and no traceback, in a separate process."""
    proc = subprocess.run(
        [sys.executable, "-m", "sinkhole.cli.main", "analyze", "--model", "nonexistent-model", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sinkhole: error: unknown model 'nonexistent-model'")
