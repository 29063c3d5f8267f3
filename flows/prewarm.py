"""Imports that `grasp run` does while its local API server boots, because the flow's first steps need them.

The server takes ~6 s to answer (Prefect's imports, on the other core) and the CLI's own imports ~4 s. What
comes first once the server answers is on the critical path: the flow's start imports Prefect's flow and task
engines and FastAPI's encoder (~1 s, for the flow's parameters), and its first task imports scikit-learn
(~1.5 s) when it writes the embedded benchmark. `import_modules(flow_start_modules(...))` does those imports in
the CLI's idle time instead. A module that is needed anyway right after costs nothing extra when the server
happens to be ready first. (Writing the data itself during the wait was tried: on 2 cores it only slowed the
CLI's imports and the server's boot, and the flow started later.)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FLOW_START = ("prefect.flow_engine", "prefect.task_engine", "prefect.utilities.visualization", "fastapi.encoders")
DATA_GENERATOR = ("sklearn.datasets",)  # grasp_core.data.drift imports it when it writes the benchmark


def flow_start_modules(params: Path, workdir: Path) -> tuple[str, ...]:
    """The flow's start, and the benchmark's generator when the run will write the data (missing, or generated
    from another recipe). A config that does not load adds nothing: the flow reports it."""
    from flows.workspace import Workspace, data_is_current
    from grasp_core.config import load_config
    from grasp_core.errors import GraspError

    try:
        generate = not data_is_current(load_config(params), Workspace(workdir))
    except (GraspError, OSError, ValueError):
        generate = False
    return FLOW_START + (DATA_GENERATOR if generate else ())


def import_modules(modules: Sequence[str]) -> None:
    """Import `modules` in order; one that fails is left for the flow to import and report."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:
            log.debug("prewarm import of %s failed: %s", name, err)
