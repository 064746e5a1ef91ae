"""The architecture's rules, checked on the source tree (README "Layout"): data flows one way.

models -> probe (the only place that changes a model for a while, through probe/hooks.py) -> Capture ->
analysis (pure) -> typed results (results/report.py) -> renderers (render/). Imports inside functions count:
a renderer that imported the probe lazily would still reach back into a model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sinkhole"
MODULES = sorted(PKG.rglob("*.py"))
MAX_LINES = 500

# What runs or changes a model: renderers and pure analyses must not import these.
RUNS_MODELS = (
    "sinkhole.probe.probe",
    "sinkhole.probe.recorder",
    "sinkhole.probe.hooks",
    "sinkhole.experiments",
    "sinkhole.probe.loading",
    "sinkhole.cache",
    "sinkhole.cli",
)


def rel(path: Path) -> str:
    return path.relative_to(PKG.parent).as_posix()


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def offending(path: Path, banned) -> list[str]:
    return sorted(m for m in imports(path) if any(m == b or m.startswith(b + ".") for b in banned))


def test_the_rules_see_the_package():
    assert len(MODULES) > 50 and any(rel(p) == "sinkhole/probe/hooks.py" for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n < MAX_LINES, f"{rel(path)} has {n} lines: split it (STYLE.md: modules of 100-500 lines)"


def test_renderers_read_results_only():
    bad = {rel(p): offending(p, RUNS_MODELS + ("torch",)) for p in (PKG / "render").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_analyses_are_pure():
    bad = {rel(p): offending(p, RUNS_MODELS) for p in (PKG / "analysis").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_library_never_imports_the_cli():
    # sinkhole/__main__.py is the CLI itself (`python -m sinkhole`, what torchrun -m starts), not library
    cli = lambda p: "cli" in p.parts or rel(p) == "sinkhole/__main__.py"  # noqa: E731
    bad = {rel(p): offending(p, ("sinkhole.cli",)) for p in MODULES if not cli(p)}
    assert not {k: v for k, v in bad.items() if v}


def test_one_hook_primitive():
    """Hooks and attention switches are installed in probe/hooks.py only (always undone in `finally`)."""
    calls = ("register_forward_hook", "register_forward_pre_hook", "set_attn_implementation")
    allowed = {"sinkhole/probe/hooks.py", "sinkhole/lab/model.py"}  # the lab builds its model on SDPA once
    found = {}
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in calls and rel(p) not in allowed:
                found.setdefault(rel(p), []).append(f"{node.attr} (line {node.lineno})")
    assert not found


def test_the_rules_can_fail(tmp_path):
    bad = tmp_path / "renderer.py"
    bad.write_text("def page(r):\n    from sinkhole.probe.probe import ModelProbe\n    import torch\n")
    assert offending(bad, RUNS_MODELS + ("torch",)) == [
        "sinkhole.probe.probe",
        "sinkhole.probe.probe.ModelProbe",
        "torch",
    ]
