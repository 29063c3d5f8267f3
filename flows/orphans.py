"""Processes a killed run leaves behind, found and stopped by the next run.

Prefect's ephemeral API runs as a child process (`python -m uvicorn ... prefect.server...`). A run that
exits normally stops it (atexit); a run killed with SIGKILL cannot, and the server outlives it. Each run
therefore records its server in `<ws>/.grasp/servers/<run pid>.json` (run pid and start time, server pid
and start time, port); the next `grasp run` in that workspace stops every recorded server whose run is
dead, by its PID, after checking that the PID still names the same process (same start time).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import psutil

from flows.lock import is_owner_alive, process_started
from grasp_core.durable import write_text_durably

RECORD_DIR = Path(".grasp") / "servers"
_log = logging.getLogger(__name__)


def record_server(workdir: Path, server_pid: int, port: int | None) -> Path:
    """Write this run's record of its ephemeral Prefect server; returns the record's path."""
    folder = Path(workdir) / RECORD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    record = {"pid": me, "pid_started": process_started(me), "hostname": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds"), "server_pid": server_pid,
              "server_started": process_started(server_pid), "port": port}
    path = folder / f"{me}.json"
    write_text_durably(path, json.dumps(record))
    return path


def forget_server(path: Path | None) -> None:
    """Drop this run's record (its server stops with it)."""
    if path is not None:
        path.unlink(missing_ok=True)


def reap_orphans(workdir: Path, grace_s: float = 5.0) -> list[int]:
    """Stop the ephemeral servers of dead runs of this workspace; returns the PIDs stopped.

    A record whose run is alive is left alone (a concurrent run). A server PID is signalled only while it
    still has the start time recorded for it, so a recycled PID is never touched.
    """
    folder = Path(workdir) / RECORD_DIR
    stopped: list[int] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if is_owner_alive(record):
            continue
        pid, started = int(record.get("server_pid", -1)), record.get("server_started")
        now = process_started(pid)
        if now is not None and started is not None and abs(now - float(started)) < 1.0:
            _stop(pid, grace_s)
            stopped.append(pid)
            _log.warning("stopped pid %d: the Prefect server of a run that died (pid %s, %s)", pid,
                         record.get("pid"), record.get("started"))
        path.unlink(missing_ok=True)
    return stopped


def _stop(pid: int, grace_s: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout=grace_s)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
