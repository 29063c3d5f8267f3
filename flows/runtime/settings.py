"""Where/how settings: environment defaults that keep every tool local, quiet and offline.

Applied before prefect, mlflow, dvc or great_expectations is imported. Values already in the
environment win, so `PREFECT_API_URL`, `MLFLOW_TRACKING_URI` and friends point elsewhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
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
    # the workspace lock's decisions (a scheduled run waiting for it, then taking it) in the flow run's logs too,
    # so the Prefect UI shows why a tick started late; outside a run they stay on the terminal only
    "PREFECT_LOGGING_EXTRA_LOGGERS": "flows.runtime.lock",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
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


RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _ConsoleFilter(logging.Filter):
    """On the terminal: no run-log line that flows/reports/progress.py already printed and, without --verbose, no
    run-log line at all (Prefect's per-run INFO chatter and the tracebacks the CLI reports on its own)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "grasp_progress", False):
            return False
        return self.verbose or not record.name.startswith(RUN_LOGGERS)


def route_run_logs(verbose: bool) -> None:
    """Run logs go to the Prefect API at INFO (the UI shows every stage); the terminal keeps the progress
    lines and, with --verbose, Prefect's own run logs. Call after prefect is imported (it configures logging)."""
    for name in RUN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)  # PREFECT_LOGGING_LEVEL (WARNING here) is for the console
    for name in ("prefect.flow_engine", "prefect.task_engine"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _ConsoleFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_ConsoleFilter(verbose))


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
