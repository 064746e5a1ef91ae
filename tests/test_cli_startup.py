"""The CLI's first output comes before the slow imports: building the parser (what `--version`,
`--help` and usage errors need) imports neither torch nor transformers nor numpy, and `analyze`
says which model it loads before it imports them. Subprocesses, so that what other tests imported
does not hide an import (timings: BENCHMARKS.md, "CLI start-up")."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "numpy")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_the_parser_imports_nothing_heavy():
    out = _run(
        "import json, sys\n"
        "from sinkhole.cli.main import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_usage_error_and_unknown_model_are_refused_before_torch():
    out = _run(
        "import json, sys\n"
        "from sinkhole.cli.main import main\n"
        "codes = [main(['analyze', '--bogus']), main(['analyze', '--model', 'no-such-model', '--prompt', 'x'])]\n"
        f"print(json.dumps([codes, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    codes, heavy = json.loads(out.stdout)
    assert codes == [2, 2] and heavy == []
    assert "unknown model 'no-such-model'" in out.stderr


def test_analyze_says_what_it_loads_before_importing_torch(tmp_path):
    # A directory with a config and no weights: resolved (so announced), then refused by the load.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    out = _run(
        "import json, sys\n"
        "import sinkhole.cli.common as common\n"
        "seen = []\n"
        "real = common.status\n"
        "common.status = lambda msg: (seen.append((msg, 'torch' in sys.modules)), real(msg))\n"
        "from sinkhole.cli.main import main\n"
        f"code = main(['analyze', '--model', {str(tmp_path)!r}, '--prompt', 'x'])\n"
        "print(json.dumps([code, seen]))\n"
    )
    code, seen = json.loads(out.stdout)
    assert code == 2  # no weights
    assert seen and seen[0][0] == f"loading {tmp_path} (cpu, float32) ..."
    assert seen[0][1] is False  # printed before torch was imported
    assert out.stderr.count("loading ") == 1  # load_model's own copy of the line is not printed again
