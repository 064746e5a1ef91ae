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


def test_the_cli_makes_every_thread_count_compute_the_same_bits():
    # A rank's thread share must not change a number (docs/eval.md, "Same numbers as one process"):
    # MKL rounds a 5-7 or 9-11 row matmul differently with 1 and 2 threads unless MKL_CBWR is strict.
    import os

    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = (
        "import json, os, contextlib, io\n"
        "from sinkhole.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--version'])\n"
        "import torch\n"
        "w = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0))\n"
        "differ = []\n"
        "for rows in range(1, 20):\n"
        "    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))\n"
        "    torch.set_num_threads(1); a = x @ w\n"
        "    torch.set_num_threads(2); b = x @ w\n"
        "    differ += [] if torch.equal(a, b) else [rows]\n"
        "print(json.dumps([os.environ.get('MKL_CBWR'), differ]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["AUTO,STRICT", []]
