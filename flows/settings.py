"""Where/how settings: environment defaults that keep every tool local, quiet and offline.

Applied before prefect, mlflow, dvc or great_expectations is imported. Values already in the
environment win, so `PREFECT_API_URL`, `MLFLOW_TRACKING_URI` and friends point elsewhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QUIET_OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # else a telemetry DNS lookup and a locked-DB traceback
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # 2 busy cores can exceed the 20 s default
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",  # else a crashing analytics daemon after every DVC command
    "GIT_PYTHON_REFRESH": "quiet",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


def apply_defaults(workdir: Path, verbose: bool = False) -> None:
    """Set the quiet/offline defaults, a persistent PREFECT_HOME in the workspace, and log levels."""
    for key, value in QUIET_OFFLINE.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str((workdir / ".cache" / "prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # the server's SQLite needs the folder
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    level = logging.INFO if verbose else logging.WARNING
    for name in ("great_expectations", "mlflow", "alembic", "dvc"):
        logging.getLogger(name).setLevel(level)
    for name in ("great_expectations._docs_decorators", "great_expectations.expectations.registry"):
        logging.getLogger(name).setLevel(logging.WARNING)  # ~150 import-time lines, even with --verbose


def quiet_run_logs(verbose: bool) -> None:
    """Without --verbose, keep Prefect's per-run ERROR logs (a traceback for every failed task and flow run)
    off the terminal: the CLI prints a user error as one `grasp: error:` line and lets anything else
    propagate with its traceback, so those logs only repeat it. Call after prefect is imported."""
    if verbose:
        return
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Prefect's flow-run heartbeat off for the flows started inside, subflows included. A synchronous flow
    joins its heartbeat thread when it ends, and that thread sleeps in 1 s steps: up to 1 s lost per flow
    (measured: 0.7-1.0 s at the end of every `train-sources` subflow). Heartbeats let a server mark a run
    whose process died as crashed; a grasp flow runs in the process of the command that started it, which
    reports its own exit. Call after prefect is imported."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if get_current_settings().flows.heartbeat_frequency is None:  # already off (nested): skip the settings copy
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def code_commit() -> str:
    """Commit of the grasp code itself (`-dirty` when it has uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
