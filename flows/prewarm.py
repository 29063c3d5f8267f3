"""Imports that the flow's first steps need, done while `grasp run` waits for its local API server.

After its own imports (~4 s) the CLI waits for the server it started (~6 s of Prefect's imports on the other
core): up to 2 s in which this process's core is idle. Then the flow's start imports Prefect's flow and task
engines and FastAPI's encoder (~1 s, for the flow's parameters), and the first task, which writes the
embedded benchmark, imports scikit-learn (~1.5 s). Both come before any other work can begin, so
`import_in_background` runs those imports in a thread during the wait. A module still being imported when the
flow needs it is simply waited for (Python's import lock); one that fails to import is left for the flow
to import and report itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FLOW_START = ("prefect.flow_engine", "prefect.task_engine", "prefect.utilities.visualization", "fastapi.encoders")
DATA_GENERATOR = ("sklearn.datasets",)  # grasp_core.data.drift imports it when it writes the benchmark


def flow_start_modules(params: Path, workdir: Path) -> tuple[str, ...]:
    """The modules to import ahead: the flow's start, and the benchmark's generator when the run will write
    the data (missing, or generated from another recipe). A config that does not load adds nothing: the flow
    reports it."""
    from flows.workspace import Workspace, data_is_current
    from grasp_core.config import load_config
    from grasp_core.errors import GraspError

    try:
        generate = not data_is_current(load_config(params), Workspace(workdir))
    except (GraspError, OSError, ValueError):
        generate = False
    return FLOW_START + (DATA_GENERATOR if generate else ())


def import_in_background(modules: Sequence[str]) -> threading.Thread:
    """Import `modules` in order in a thread of its own; returns it (started). Not a daemon, so the process
    never exits in the middle of an import."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as err:  # the flow imports it again and fails with its own error
                log.debug("prewarm import of %s failed: %s", name, err)

    thread = threading.Thread(target=run, name="grasp-prewarm-imports")
    thread.start()
    return thread
