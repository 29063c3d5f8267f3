"""Where/how settings: environment defaults that keep every tool local, quiet and offline.

Applied before prefect, mlflow, dvc or great_expectations is imported. Values already in the
environment win, so `PREFECT_API_URL`, `MLFLOW_TRACKING_URI` and friends point elsewhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
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


class ApiBoot:
    """The Prefect API coming up in a thread (see `prefect_api_in_background`); call it to wait for it."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._boot, name="prefect-api-boot", daemon=True)
        self.thread.start()

    def _boot(self) -> None:
        try:
            from prefect import get_client

            with get_client(sync_client=True) as client:
                client.api_healthcheck()
        except BaseException as err:  # re-raised by __call__, in the caller's thread
            self.errors.append(err)

    def __call__(self) -> None:
        """Wait until the API answers; re-raise the boot's error, so the flow never starts on half an API."""
        self.thread.join()
        if self.errors:
            raise self.errors[0]

    def quietly(self) -> None:
        """Wait for the boot to end, whatever its outcome (on an error path that must not leave a server
        process starting after Prefect's exit handler has run)."""
        self.thread.join()


def prefect_api_in_background() -> ApiBoot:
    """Bring up the Prefect API in a thread while this process goes on importing; call the result to wait.

    In Prefect's ephemeral mode the first client (`prefect.get_client`) starts a temporary server and waits
    until it is healthy; the flow's own client then re-uses it. That boot (a server process importing and, on
    a fresh workspace, migrating its database: ~14 s of CPU, ~22 s fresh) left this process idle; begun here
    it overlaps the pipeline's imports (torch, MLflow) on the other core. Call after `apply_defaults`.
    """
    return ApiBoot()
