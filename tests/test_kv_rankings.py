"""benchmarks/kv_rankings.py's arithmetic: the task ratio and kv-bench's cells (no model)."""

from conftest import benchmark_script


def load():
    return benchmark_script("kv_rankings")


# (task, length, depth) -> one outcome per dense-answered sample; passkey draws its depth per seed
HITS = {
    ("passkey", 2048, 0.31): [True],
    ("passkey", 2048, 0.62): [False],
    ("passkey", 2048, 0.88): [True],
    ("niah", 2048, 0.0): [True, False, False],
    ("niah", 2048, 0.5): [True, True],
    ("niah", 4096, 0.0): [True],
}


def test_grid_cells_pool_passkey_over_depths_and_keep_niah_depths():
    grid = load().grid_cells(HITS)
    assert grid == {
        ("passkey", 2048, None): 2 / 3,
        ("niah", 2048, 0.0): 1 / 3,
        ("niah", 2048, 0.5): 1.0,
        ("niah", 4096, 0.0): 1.0,
    }


def test_retrieval_ratio_weighs_tasks_alike():
    # passkey 2/3, niah 4/6: each task counts once, whatever its number of samples
    assert abs(load().retrieval_ratio(HITS) - (2 / 3 + 4 / 6) / 2) < 1e-12


def test_select_flags_need_select(capsys, monkeypatch):
    """--select-fill or --select-global-only without --select: one line, exit 2, before any model loads."""
    import sys

    mod = load()
    for flag in ("--select-fill", "--select-global-only"):
        monkeypatch.setattr(sys, "argv", ["kv_rankings.py", flag, "--json", "x.json"])
        assert mod.main() == 2
        err = capsys.readouterr().err.strip()
        assert f"{flag} changes what --select keeps" in err and len(err.splitlines()) == 1
