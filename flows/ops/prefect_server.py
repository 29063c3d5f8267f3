"""The workspace's Prefect server: `prefect server start` through Prefect's CLI, in a session of its own.

`grasp serve` keeps one, recorded in `<ws>/.grasp/prefect-server.json`, that a later call (and `grasp run`)
re-uses while it is healthy; only the call that started a server stops it. A plain `grasp run` with no such
server starts one of its own (`run_server`), launched before its imports and stopped when it exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from flows.runtime.lock import exclusive, process_started
from flows.runtime.settings import QUIET_OFFLINE
from grasp_core.errors import GraspError

RECORD = Path(".grasp") / "prefect-server.json"
LOG = Path(".grasp") / "prefect-server.log"
START_TIMEOUT_S = 90.0  # measured 9-29 s to healthy on a busy 2-core box
STOP_TIMEOUT_S = 20.0


class ServerStartError(GraspError):
    """The local Prefect server did not come up."""


@dataclass
class ServerHandle:
    """A Prefect API to talk to; `stop()` ends it only if this handle's call started it."""

    url: str  # the API URL, ending in /api
    ui_url: str
    pid: int | None  # None for a server named by PREFECT_API_URL
    started: bool
    record: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    log: Path | None = None  # the server's output, for an error message

    def booting(self) -> bool:
        """True while a server this handle started is alive and does not answer /api/health yet."""
        proc = self.process
        return proc is not None and proc.poll() is None and not _wait_healthy(self.url, 0.0, lambda: True, 1.0)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until a server this handle started answers /api/health; else stop it and raise ServerStartError."""
        proc = self.process
        if proc is None:
            return
        try:
            if not _wait_healthy(self.url, timeout_s, is_alive=lambda: proc.poll() is None):
                why = "exited before it was healthy" if proc.poll() is not None else f"not healthy in {timeout_s:.0f} s"
                raise ServerStartError(f"{self.log}: the Prefect server (pid {proc.pid}, {self.url}) {why}; "
                                       f"last log lines: {_tail(self.log) if self.log else '(no log)'}")
        except BaseException:  # includes a SIGTERM turned into SystemExit while we wait: never leave it behind
            self.stop()
            raise

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout_s`, and drop the record (idempotent)."""
        if not self.started or self.pid is None:
            return
        _terminate_group(self.pid, self.process, timeout_s)
        if self.record is not None and _read_record(self.record).get("pid") == self.pid:
            self.record.unlink(missing_ok=True)
        self.started = False


def ensure_prefect_server(ws: Path, timeout_s: float = START_TIMEOUT_S, ui: bool = True) -> ServerHandle:
    """The Prefect API to use: $PREFECT_API_URL, else this workspace's healthy recorded server, else a new one.

    Sets `os.environ["PREFECT_API_URL"]` so that child processes (served flow runs) inherit it. Prefect reads
    its settings once at import, so in-process clients should also enter `temporary_settings` (serve_pipeline
    does).
    """
    if url := os.environ.get("PREFECT_API_URL"):
        return ServerHandle(url=url, ui_url=url.removesuffix("/").removesuffix("/api"), pid=None, started=False)
    ws = Path(ws).resolve()
    record = ws / RECORD
    with exclusive(record.with_name(record.name + ".guard")):  # two callers at once start one server
        handle = _reuse_recorded(record, timeout_s) or _start_server(ws, record, timeout_s, ui)
    os.environ["PREFECT_API_URL"] = handle.url
    return handle


def workspace_api(ws: Path, start: bool = False) -> ServerHandle | None:
    """The Prefect API a `grasp run` in `ws` talks to, exported as $PREFECT_API_URL (call before prefect is
    imported): $PREFECT_API_URL itself; else the workspace's recorded `prefect server start` while it is healthy
    (the one `grasp serve` keeps); else, with `start` (worker processes must report to one API: Dask), a new
    one without UI that the caller stops; else None: Prefect's ephemeral mode, a temporary server of its own."""
    if os.environ.get("PREFECT_API_URL") or start:
        return ensure_prefect_server(ws, ui=False)
    record = Path(ws).resolve() / RECORD
    if not _is_recorded_server(_read_record(record)):
        return None
    with exclusive(record.with_name(record.name + ".guard")):
        handle = _reuse_recorded(record, START_TIMEOUT_S)
    if handle is not None:
        os.environ["PREFECT_API_URL"] = handle.url
    return handle


def check_prefect_db() -> None:
    """Fail as one line when the SQLite database Prefect's ephemeral mode would open ($PREFECT_HOME/prefect.db,
    unless a database URL is configured) is corrupt."""
    from flows.stores.health import PREFECT_RECOVERY, check_sqlite

    if not any(os.environ.get(k) for k in ("PREFECT_SERVER_DATABASE_CONNECTION_URL",
                                           "PREFECT_API_DATABASE_CONNECTION_URL")):
        check_sqlite(Path(os.environ["PREFECT_HOME"]) / "prefect.db", PREFECT_RECOVERY)


def _reuse_recorded(record: Path, timeout_s: float) -> ServerHandle | None:
    """The recorded server if it is still ours and healthy; a record of a dead server is dropped."""
    info = _read_record(record)
    pid = info.get("pid")
    if not isinstance(pid, int) or not _is_recorded_server(info):
        record.unlink(missing_ok=True)
        return None
    if not _wait_healthy(info["url"], timeout_s, is_alive=lambda: _is_recorded_server(info)):
        raise ServerStartError(f"{record}: the recorded Prefect server (pid {pid}, {info['url']}) is running but "
                               f"not healthy after {timeout_s:.0f} s; stop it (kill {pid}) and try again")
    return ServerHandle(url=info["url"], ui_url=info["ui_url"], pid=pid, started=False, record=record)


def _start_server(ws: Path, record: Path, timeout_s: float, ui: bool) -> ServerHandle:
    """Start `prefect server start` in its own session and wait until /api/health answers."""
    handle = _launch(ws, record, ui)
    handle.wait_ready(timeout_s)
    return handle


def run_server(ws: Path) -> ServerHandle:
    """A `prefect server start` (no UI) of this `grasp run` alone, launched now and awaited later (`wait_ready`).

    Launched before the run imports Prefect, torch and MLflow, its boot (an import and, on a new workspace,
    Prefect's database migrations: ~15 s of one core) overlaps those imports on the other core; Prefect's
    ephemeral mode could only start its server once Prefect itself was imported. It is stopped at interpreter
    exit, after the exit handlers Prefect registers later (they send the last logs and events to it). Not
    recorded: a `grasp serve` started meanwhile must not adopt a server that ends with this run.
    """
    import atexit

    handle = _launch(Path(ws).resolve(), None, ui=False, extra=("--no-scheduler", "--no-late-runs"), env=RUN_ONLY)
    atexit.register(handle.stop)  # registered before Prefect's own handlers, so it runs after them
    os.environ["PREFECT_API_URL"] = handle.url  # before prefect is imported: its settings read it once
    return handle


# a run's own server serves that run only: no schedules to turn into runs, no late runs, no workers to watch
# (Prefect's settings; its ephemeral server runs none of these services either)
RUN_ONLY = {"PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false"}


def _launch(ws: Path, record: Path | None, ui: bool, extra: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> ServerHandle:
    """Popen `prefect server start` (plus `extra` options and `env` settings) on a free port of 127.0.0.1, in
    its own session, logging to LOG."""
    port = _free_port()
    home = ws / ".cache" / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    environ = {**QUIET_OFFLINE, **(env or {}), **os.environ, "PREFECT_HOME": str(home)}  # the workspace's database
    environ.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--analytics-off", *([] if ui else ["--no-ui"]), *extra]
    log = ws / LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=environ, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ws)
    url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    handle = ServerHandle(url=url, ui_url=ui_url, pid=proc.pid, started=True, record=record, process=proc, log=log)
    if record is not None:
        try:
            _write_record(record, {"pid": proc.pid, "pid_started": process_started(proc.pid), "port": port,
                                   "url": url, "ui_url": ui_url,
                                   "started": datetime.now(UTC).isoformat(timespec="seconds")})
        except BaseException:
            handle.stop()
            raise
    return handle


def stop_recorded_server(ws: Path, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the server recorded for workspace `ws` (whoever started it); return its PID, or None if none ran."""
    record = Path(ws).resolve() / RECORD
    info = _read_record(record)
    pid = info.get("pid") if _is_recorded_server(info) else None
    if isinstance(pid, int):
        _terminate_group(pid, None, timeout_s)
    record.unlink(missing_ok=True)
    return pid


def _is_recorded_server(info: dict) -> bool:
    """The recorded PID still names the same `prefect server start` process (not a recycled PID)."""
    pid, started = info.get("pid"), info.get("pid_started")
    if not isinstance(pid, int) or (now := process_started(pid)) is None:
        return False
    if started is not None and abs(now - float(started)) >= 1.0:
        return False
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "server" in cmdline and str(info.get("port")) in cmdline


def _terminate_group(pid: int, proc: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it if it is still there after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(pid, proc, timeout_s):
            break
    if proc is not None:
        proc.wait(timeout=5)  # reap our child, else it lingers as a zombie that looks alive


def _wait_gone(pid: int, proc: subprocess.Popen | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else process_started(pid) is None:
            return True
        time.sleep(0.1)
    return False


def _wait_healthy(url: str, timeout_s: float, is_alive: Callable[[], bool], request_s: float = 5.0) -> bool:
    """Poll `<url>/health` until it answers 200, the process dies, or `timeout_s` passes (asked at least once)."""
    deadline = time.monotonic() + timeout_s
    while is_alive():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=request_s) as response:
                if response.status == 200:
                    return True
        except OSError:  # refused while starting, or a timeout under load
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_record(record: Path) -> dict:
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_record(record: Path, info: dict) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(record)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    text = [line.strip() for line in text if line.strip()]
    return " | ".join(text[-lines:]) or "(empty log)"
