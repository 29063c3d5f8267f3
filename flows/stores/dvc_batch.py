"""Run several DVC commands in one Python process: `python -m flows.stores.dvc_batch '<json list of argv lists>'`.

Each `python -m dvc` pays DVC's import (~0.9 s of CPU); a workspace's first run needs five commands
(init, config, remote add, add, push). They run in order through DVC's own CLI entry point, so their
behaviour and messages are DVC's; the first failure stops the batch and names itself on stderr. The
process runs at a lower priority: its work has slack, and on 2 cores it would otherwise slow the gate.
"""

from __future__ import annotations

import json
import os
import sys

FAILED = "grasp-dvc-batch: failed command"


NICENESS = 10  # DVC works beside the critical path (GX gate, training): on a busy machine it yields the CPU


def main(argv: list[str]) -> int:
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    from dvc.cli import main as dvc_main

    for index, args in enumerate(json.loads(argv[0])):
        code = dvc_main(args)
        if code:
            print(f"{FAILED} {index}", file=sys.stderr)
            return int(code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
