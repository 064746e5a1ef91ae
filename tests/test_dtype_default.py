"""One default dtype for every command and the API (sinkhole.models.dtypes.default_dtype): float32
on the CPU, bfloat16 on CUDA. Every subcommand with a --dtype option is run up to its model load
(which is stopped there) and must ask for the default: `vocab-sweep` used to pick bfloat16 on the
CPU although --help said float32 (and float32 is the faster of the two there, BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.dtypes import default_dtype

EXTRA = {  # what each command needs to get as far as loading its model
    "analyze": ["--prompt", "hello"],
    "eval": ["--out", "{tmp}/eval"],
    "profile": ["--json", "{tmp}/p.json"],
    "quant": ["--validate"],
    "mask": ["--texts", "{tmp}/texts.txt", "--npz", "{tmp}/mask.npz"],
    "kv-bench": ["--json", "{tmp}/kv.json"],
}


def dtype_commands() -> list[str]:
    from sinkhole.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(name for name, p in sub.choices.items() if "--dtype" in p._option_string_actions)


def test_the_rule():
    assert default_dtype("cpu") == "float32"
    assert default_dtype("cuda") == default_dtype("cuda:1") == "bfloat16"


def test_every_model_command_has_a_dtype_option():
    assert {"analyze", "mechanism", "vocab-sweep", "eval", "profile", "stream", "quant"} <= set(dtype_commands())


@pytest.mark.parametrize("command", dtype_commands())
def test_every_command_loads_in_the_default_dtype(command, tmp_path, monkeypatch, capsys):
    import sinkhole.probe.loading as loading
    from sinkhole.cli.main import main

    asked = []

    def stop_at_load(device, dtype):
        asked.append(loading.pick_device_dtype.__wrapped__(device, dtype))
        raise SinkholeError("stopped at the model load")

    stop_at_load.__wrapped__ = loading.pick_device_dtype
    monkeypatch.setattr(loading, "pick_device_dtype", stop_at_load)
    (tmp_path / "texts.txt").write_text("one text\nanother text\n")
    extra = [a.format(tmp=tmp_path) for a in EXTRA.get(command, [])]
    assert main([command, *extra]) == 2
    assert "stopped at the model load" in capsys.readouterr().err, f"{command} failed before loading"
    assert asked == [("cpu", torch.float32)]
    asked.clear()
    main([command, *extra, "--dtype", "bfloat16"])  # an explicit --dtype still wins
    assert asked == [("cpu", torch.bfloat16)]
