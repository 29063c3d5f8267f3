"""Scheduled runs: a local Prefect server as a background service, and `grasp_run_flow` served on a schedule.

Prefect's ephemeral API cannot schedule ("Cannot schedule flows on an ephemeral server"), so a schedule needs
a real `prefect server start`. The server runs in its own session (so a Ctrl-C in the terminal does not reach
it) and is recorded in `<ws>/.grasp/prefect-server.json`; a later call re-uses it while it is healthy. Only the
call that started a server stops it. `grasp run` talks to that same server while one is up (`workspace_api`),
so two servers never share the workspace's Prefect database; otherwise it uses Prefect's own ephemeral mode.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from flows.runtime.execution import AUTO, Compute
from flows.runtime.lock import exclusive, process_started
from flows.runtime.settings import QUIET_OFFLINE
from grasp_core.errors import ConfigError, GraspError

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
    port = _free_port()
    home = ws / ".cache" / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {**QUIET_OFFLINE, **os.environ, "PREFECT_HOME": str(home)}  # the workspace's own database
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--analytics-off", *([] if ui else ["--no-ui"])]
    log = ws / LOG
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ws)
    url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    handle = ServerHandle(url=url, ui_url=ui_url, pid=proc.pid, started=True, record=record, process=proc)
    try:
        _write_record(record, {"pid": proc.pid, "pid_started": process_started(proc.pid), "port": port, "url": url,
                               "ui_url": ui_url, "started": datetime.now(UTC).isoformat(timespec="seconds")})
        if not _wait_healthy(url, timeout_s, is_alive=lambda: proc.poll() is None):
            why = "exited before it was healthy" if proc.poll() is not None else f"not healthy in {timeout_s:.0f} s"
            raise ServerStartError(f"{log}: the Prefect server (pid {proc.pid}, port {port}) {why}; "
                                   f"last log lines: {_tail(log)}")
    except BaseException:  # includes a SIGTERM turned into SystemExit while we wait: never leave it behind
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


def _wait_healthy(url: str, timeout_s: float, is_alive: Callable[[], bool]) -> bool:
    """Poll `<url>/health` until it answers 200, the process dies, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_alive():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:  # refused while starting, or a timeout under load
            pass
        time.sleep(0.5)
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


def flow_parameters(ws: Path, params: Path, auto_promote: bool, tracking_uri: str | None,
                    dvc_remote: str | None = None, baselines: bool = False,
                    lock_wait_s: float = 900.0, compute: Compute = AUTO) -> dict[str, Any]:
    """The parameters a served run passes to `grasp_run_flow` (absolute paths: runs start in another folder;
    the device and AMP choice as values: a served run reads no GRASP_* variable).

    A scheduled run that finds the workspace held waits up to `lock_wait_s` for it (logged), instead of
    failing and losing that tick."""
    from flows.pipeline.run import grasp_run_flow

    values: dict[str, Any] = {"params_path": str(Path(params).resolve()), "workdir": str(Path(ws).resolve()),
                              "tracking_uri": tracking_uri, "dvc_remote": dvc_remote, "baselines": baselines,
                              "quiet": False, "verbose": False, "lock_wait_s": lock_wait_s,
                              "device": compute.device, "amp": compute.amp}
    if "auto_promote" in inspect.signature(grasp_run_flow.fn).parameters:
        values["auto_promote"] = auto_promote
    elif auto_promote:
        raise ConfigError("auto_promote: this version of the grasp-run flow has no auto_promote parameter; "
                          "drop the option or update grasp")
    return values


def check_schedule(cron: str | None, interval_s: int | None) -> None:
    """Exactly one of a valid cron string or a positive interval."""
    from prefect.client.schemas.schedules import CronSchedule

    if (cron is None) == (interval_s is None):
        raise ConfigError(f"schedule: give exactly one of a cron string or an interval, got cron={cron!r} and "
                          f"interval_s={interval_s!r}")
    if interval_s is not None and interval_s <= 0:
        raise ConfigError(f"schedule: interval_s = {interval_s} must be a positive number of seconds")
    if cron is not None:
        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise ConfigError(f"schedule: {cron!r} is not a valid cron string; "
                              "e.g. '0 3 * * *' (03:00 daily)") from None


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit until Prefect's runner installs its own (graceful) SIGTERM handler,
    so a stop during start-up still runs our `finally` and no server is orphaned."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_pipeline(ws: Path, params: Path, cron: str | None = None, interval_s: int | None = None,
                   auto_promote: bool = False, tracking_uri: str | None = None,
                   deployment_name: str = "grasp-scheduled", dvc_remote: str | None = None,
                   baselines: bool = False, lock_wait_s: float = 900.0, compute: Compute = AUTO) -> None:
    """Serve `grasp_run_flow` as deployment `grasp-run/<deployment_name>` on a schedule, until SIGTERM or Ctrl-C.

    Runs execute one at a time in child processes of this one. On exit the deployment is paused and a server
    this call started is stopped.
    """
    from grasp_core.config import load_config

    check_schedule(cron, interval_s)
    load_config(Path(params))  # a bad params.yaml fails now, not at the first scheduled run
    parameters = flow_parameters(ws, params, auto_promote, tracking_uri, dvc_remote, baselines, lock_wait_s, compute)
    server: ServerHandle | None = None
    with _terminate_as_exit():
        try:
            server = ensure_prefect_server(ws)
            _serve(server, deployment_name, cron, interval_s, parameters)
        finally:
            if server is not None:
                server.stop()


def _serve(server: ServerHandle, name: str, cron: str | None, interval_s: int | None,
           parameters: dict[str, Any]) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline.run import grasp_run_flow

    every = f"cron '{cron}'" if cron else f"every {interval_s} s"
    print(f"serving deployment 'grasp-run/{name}' ({every}) on {server.url}\n"
          f"Prefect UI: {server.ui_url}/deployments  |  stop with Ctrl-C or SIGTERM", flush=True)
    with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_UI_URL: server.ui_url}):
        # MODULE_PATH: runs import flows.pipeline.run by name, so they work whatever the current folder is.
        grasp_run_flow.serve(name=name, cron=cron, interval=interval_s, parameters=parameters, limit=1,
                             pause_on_shutdown=True, print_starting_message=False,
                             entrypoint_type=EntrypointType.MODULE_PATH)


def deployment_snippet(deployment_name: str = "grasp-nightly", pool: str = "grasp-pool",
                       cron: str = "0 3 * * *") -> str:
    """docs/operations.md: the same schedule on a long-lived Prefect server with a process work pool and a worker."""
    return f"""\
### Scheduled runs on your own Prefect server

`grasp schedule` serves the flow from one process, with a local server it starts itself. To run it on a
long-lived Prefect server with a work pool instead:

```bash
export PREFECT_API_URL=http://<prefect-host>:4200/api         # or: prefect server start  (UI on :4200)
prefect work-pool create {pool} --type process
python - <<'PY'
from prefect.types.entrypoint import EntrypointType
from flows.pipeline.run import grasp_run_flow
grasp_run_flow.deploy(
    name="{deployment_name}", work_pool_name="{pool}", cron="{cron}",
    parameters={{"params_path": "/srv/grasp/params.yaml", "workdir": "/srv/grasp",
                "tracking_uri": "http://<mlflow-host>:5000"}},
    entrypoint_type=EntrypointType.MODULE_PATH,  # the worker imports the installed grasp: no image, no storage
)
PY
prefect worker start --pool {pool}   # on the machine that holds the workspace; runs each scheduled flow
```
`prefect deployment run 'grasp-run/{deployment_name}'` starts one run now. `cron` is in UTC; for local time pass
`schedules=[prefect.schedules.Cron("{cron}", timezone="Europe/Paris")]` instead. Stop the worker before the
server. To have the worker pull the code
from git instead of importing an installed grasp: `prefect.flow.from_source(source="https://github.com/<org>/grasp.git",
entrypoint="flows/pipeline/run.py:grasp_run_flow").deploy(name=..., work_pool_name=..., cron=..., parameters=...)`.
"""
