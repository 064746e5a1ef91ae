"""One rank of a torchrun job in tests/test_distributed.py: the sinkhole CLI with test-only changes.

Environment (all optional):
    SINKHOLE_TEST_RANK_ARGS  JSON {"<rank>": [extra CLI arguments]}: what one rank gets differently
    SINKHOLE_TEST_PIDS       a directory: this rank writes its pid to rank-<RANK> there (to kill it)
    SINKHOLE_TEST_DELAY      seconds of sleep before each probe batch and each mask batch (so a test can
                             kill a run part way)
    SINKHOLE_TEST_THREADS    a directory: once the command returned, this rank writes the names of its
                             live threads to threads-<RANK> there (a process group left alive keeps gloo's)
"""

import json
import os
import sys
import time
from pathlib import Path

rank = os.environ.get("RANK", "0")
extra = json.loads(os.environ.get("SINKHOLE_TEST_RANK_ARGS", "{}")).get(rank, [])
if os.environ.get("SINKHOLE_TEST_PIDS"):
    Path(os.environ["SINKHOLE_TEST_PIDS"], f"rank-{rank}").write_text(str(os.getpid()))
delay = float(os.environ.get("SINKHOLE_TEST_DELAY") or 0)
if delay:
    from sinkhole.probe.probe import ModelProbe

    run_batch = ModelProbe.run_batch

    def slow(self, *args, **kw):
        time.sleep(delay)
        return run_batch(self, *args, **kw)

    ModelProbe.run_batch = slow

    import sinkhole.mask.compute as mask_core  # before sinkhole.mask.store imports mask_batch from it

    mask_batch = mask_core.mask_batch

    def slow_mask(*args, **kw):
        time.sleep(delay)
        return mask_batch(*args, **kw)

    mask_core.mask_batch = slow_mask

from sinkhole.cli.main import main  # noqa: E402

code = main(sys.argv[1:] + extra)
if os.environ.get("SINKHOLE_TEST_THREADS"):
    names = [Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()]
    Path(os.environ["SINKHOLE_TEST_THREADS"], f"threads-{rank}").write_text("\n".join(names))
sys.exit(code)
