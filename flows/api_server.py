"""This run's own local Prefect API server, started before anything heavy is imported.

Without PREFECT_API_URL, Prefect starts the same server (`uvicorn prefect.server.api.server:create_app`,
its "ephemeral" mode) only when the first flow runs, after the CLI has imported torch, MLflow and GX, and
on a fresh PREFECT_HOME it first migrates an empty database. `grasp run` instead:

1. seeds a workspace's missing Prefect database from the user's migrated template (flows/local_stores.py);
2. spawns the server as its first act, so its boot (~6 s) overlaps the CLI's own imports on the other core;
3. records it for the next run to stop should this one be killed (flows/orphans.py);
4. exports PREFECT_API_URL to it, for this process and the processes it starts (Dask workers report there),
   and stops it at exit;
5. serves Prefect's app inside `flows.prefect_app.RetryBusy`, which retries SQLite write conflicts in the
   server within milliseconds instead of the client's 2 s back-off, and builds the API's routes once the
   server is up instead of on the flow's first requests;
6. skips the server's start-up setup when the database already holds it (`local_stores.holds_template_setup`:
   the template's schema revision and every block schema): the migration check (~0.6 s) and the block
   auto-registration, whose memo check alone imports every Prefect collection (prefect-dask: dask.distributed,
   ~1.7 s); and runs without automations (their two services), which a run's own short-lived server never has.

A configured PREFECT_API_URL (a real server) or database URL is left alone: nothing is started or seeded.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows import local_stores
from flows.orphans import forget_server, record_server

_DB_SETTINGS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind
# What the server's start-up setup leaves in its database: the schema revision and the block schemas.
SETUP_COLUMNS = (("alembic_version", "version_num"), ("block_schema", "checksum"))
SKIP_SETUP = {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
              "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
LOCAL_ONLY = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}  # no automations on a run's own server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalApiServer:
    """A Prefect API server in a child process; `wait_ready()` before the first flow runs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
        self.own_db = not any(os.environ.get(key) for key in _DB_SETTINGS)
        self.fresh_db = False
        self.setup_skipped = False  # the database already held the start-up setup (point 6)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._record: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        if self.own_db:
            from flows.store_health import PREFECT_RECOVERY, check_sqlite

            check_sqlite(self.db, PREFECT_RECOVERY)
            local_stores.seed(self.db, "prefect")
            self.fresh_db = not self.db.exists()
        self._spawn()
        os.environ["PREFECT_API_URL"] = self.api_url
        atexit.register(self.stop)

    def _spawn(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.setup_skipped = self.own_db and local_stores.holds_template_setup(self.db, "prefect", SETUP_COLUMNS)
        for key, value in {**LOCAL_ONLY, **(SKIP_SETUP if self.setup_skipped else {})}.items():
            env.setdefault(key, value)  # the user's own setting wins
        self.proc = subprocess.Popen(  # Prefect's own ephemeral command, with our app factory (point 5)
            [sys.executable, "-m", "uvicorn", "--factory", "flows.prefect_app:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL)
        self._record = record_server(self.workdir, self.proc.pid, self.port)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the API answers its health check; then keep a fresh database as the user's template."""
        assert self.proc is not None, "start() first"
        limit = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status = self.proc.poll()
            if status == _PORT_IN_USE:  # the port was taken between choosing and binding it
                self._spawn()
                os.environ["PREFECT_API_URL"] = self.api_url
                continue
            if status is not None:
                raise RuntimeError(f"the local Prefect API server exited with status {status} while starting "
                                   f"(PREFECT_HOME={os.environ['PREFECT_HOME']}); run with --verbose for its log")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the local Prefect API server did not answer within {limit:.0f} s "
                               "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
        if self.fresh_db:
            local_stores.save_template(self.db, "prefect")
            self.fresh_db = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        forget_server(self._record)
        self._record = None


def start_local_api(workdir: Path) -> LocalApiServer | None:
    """Start this run's API server unless PREFECT_API_URL names one; call after settings.apply_defaults."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = LocalApiServer(workdir)
    server.start()
    return server
