"""The architecture's rules, checked on the source tree (README "Layout"): data flows one way.

models -> probe (the only place that changes a model for a while, through probe/hooks.py) -> Capture ->
analysis (pure) -> typed results (results/) -> renderers (render/). Imports inside functions count:
a renderer that imported the probe lazily would still reach back into a model.

The import graph is computed from the source (every `import` and `from ... import`, relative ones and
those inside functions included): no circle between modules or between rooms (subpackages), every
import goes to its own layer or one below (LAYERS), results/ and render/ import only what they may,
and no two modules share a file name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
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


# ---- the import graph ------------------------------------------------------------------------------

# Bottom to top: an import may go to its own layer or below, never up (README "Layout").
LAYERS: dict[str, int] = {
    **dict.fromkeys(("sinkhole", "errors", "io", "text", "long_tasks", "progress", "distributed"), 0),  # utilities
    "results": 1,  # typed results: what every command writes or renders
    **dict.fromkeys(("validate", "models", "probe"), 2),  # probe may import models, not the reverse
    "analysis": 3,  # pure: results and the probe's Capture, no model runs
    **dict.fromkeys(
        ("experiments", "cache", "eval", "quant", "profiles", "mask", "kvbench", "lab", "integrations", "vllm"), 4
    ),
    "render": 5,  # text, HTML, figures from result types
    **dict.fromkeys(("cli", "__main__"), 6),
}
# What results/ and render/ may import of sinkhole besides themselves. render/ takes what results/ may
# (its writers go through sinkhole.io's atomic writes), and the result types.
RESULTS_MAY_IMPORT = ("sinkhole.errors", "sinkhole.io")
RENDER_MAY_IMPORT = RESULTS_MAY_IMPORT + ("sinkhole.results",)


def module_name(path: Path, root: Path = PKG) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth of the file, relative imports resolved).

    `from a.b import c` is an import of module a.b.c when that is a module, else of a.b; a name that is
    no module resolves to its nearest enclosing module or package."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                if name == top or name.startswith(top + "."):
                    target = resolve(name)
                    if target and target != mod:
                        found.add(target)
        graph[mod] = found
    return graph


def room(module: str) -> str:
    """The room of a module: its subpackage (sinkhole.probe), or the top-level module itself (sinkhole.io)."""
    return ".".join(module.split(".")[:2])


def room_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(room(a), set())
        for b in targets:
            if room(a) != room(b):
                out[room(a)].add(room(b))
    return out


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative): each is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def layer_of(module: str) -> int | None:
    name = room(module).split(".", 1)[-1] if "." in module else module
    return LAYERS.get(name)


def upward(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that go to a higher layer, or between rooms without a layer, or from models/ to the probe."""
    bad = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_of(a), layer_of(b)
            if la is None or lb is None:
                bad.append(f"{a} -> {b} (no layer for {room(a) if la is None else room(b)}: add it to LAYERS)")
            elif lb > la:
                bad.append(f"{a} -> {b} (layer {la} -> {lb})")
            elif room(a).endswith(".models") and room(b).endswith(".probe"):
                bad.append(f"{a} -> {b} (models/ must not import the probe)")
    return bad


def outside(graph: Mapping[str, Iterable[str]], area: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports from modules of `area` to modules that are neither in it nor in `allowed`."""
    inside = lambda m, pkg: m == pkg or m.startswith(pkg + ".")  # noqa: E731
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if inside(a, area)
        for b in targets
        if not inside(b, area) and not any(inside(b, ok) for ok in allowed)
    )


def shared_file_names(root: Path = PKG) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*.py")):
        if p.name != "__init__.py":
            seen.setdefault(p.name, []).append(p.relative_to(root.parent).as_posix())
    return {name: where for name, where in seen.items() if len(where) > 1}


GRAPH = import_graph()


def test_the_graph_sees_the_package():
    assert len(GRAPH) == len(MODULES)
    assert "sinkhole.probe.hooks" in GRAPH["sinkhole.probe.recorder"]  # a module-level import
    assert any(GRAPH.values()) and all(m in GRAPH for targets in GRAPH.values() for m in targets)


def test_results_import_only_errors_and_io():
    assert outside(GRAPH, "sinkhole.results", RESULTS_MAY_IMPORT) == []


def test_renderers_import_only_results():
    assert outside(GRAPH, "sinkhole.render", RENDER_MAY_IMPORT) == []


def test_no_module_circle():
    assert circles(GRAPH) == []


def test_no_room_circle():
    assert circles(room_graph(GRAPH)) == []


def test_imports_go_down_the_layers():
    assert upward(GRAPH) == []


def test_every_room_has_a_layer():
    assert sorted({room(m) for m in GRAPH if layer_of(m) is None}) == []


def test_no_two_modules_share_a_file_name():
    assert shared_file_names() == {}


def test_the_graph_rules_can_fail(tmp_path):
    pkg = tmp_path / "sinkhole"
    for name, text in {
        "__init__.py": "",
        "io.py": "",
        "results/__init__.py": "",
        "results/base.py": "def f():\n    from ..render import page\n",  # relative, inside a function
        "render/__init__.py": "",
        "render/page.py": "from sinkhole.results import base\nfrom sinkhole.analysis.core import x\n",
        "analysis/__init__.py": "",
        "analysis/core.py": "import sinkhole.io\nfrom sinkhole.render.page import y\n",
        "models/__init__.py": "",
        "models/base.py": "from sinkhole.probe import hooks\n",
        "probe/__init__.py": "",
        "probe/hooks.py": "from sinkhole.models import base\n",
        "mystery/__init__.py": "from sinkhole import io\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    g = import_graph(pkg)
    assert g["sinkhole.results.base"] == {"sinkhole.render.page"}
    assert g["sinkhole.render.page"] == {"sinkhole.results.base", "sinkhole.analysis.core"}
    assert outside(g, "sinkhole.results", RESULTS_MAY_IMPORT) == ["sinkhole.results.base -> sinkhole.render.page"]
    assert outside(g, "sinkhole.render", RENDER_MAY_IMPORT) == ["sinkhole.render.page -> sinkhole.analysis.core"]
    assert circles(g) == [
        ["sinkhole.analysis.core", "sinkhole.render.page", "sinkhole.results.base"],
        ["sinkhole.models.base", "sinkhole.probe.hooks"],
    ]
    assert circles(room_graph(g)) == [
        ["sinkhole.analysis", "sinkhole.render", "sinkhole.results"],
        ["sinkhole.models", "sinkhole.probe"],
    ]
    assert upward(g) == [
        "sinkhole.analysis.core -> sinkhole.render.page (layer 3 -> 5)",
        "sinkhole.models.base -> sinkhole.probe.hooks (models/ must not import the probe)",
        "sinkhole.mystery -> sinkhole.io (no layer for sinkhole.mystery: add it to LAYERS)",
        "sinkhole.results.base -> sinkhole.render.page (layer 1 -> 5)",
    ]
    assert shared_file_names(pkg) == {"base.py": ["sinkhole/models/base.py", "sinkhole/results/base.py"]}
