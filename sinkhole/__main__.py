"""`python -m sinkhole` is the `sinkhole` command, so launchers that start a module start it:
`torchrun --nproc-per-node N -m sinkhole eval ...`, `accelerate launch -m sinkhole eval ...`
(sinkhole.distributed; docs/eval.md, "More than one GPU or machine")."""

import sys

from sinkhole.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
