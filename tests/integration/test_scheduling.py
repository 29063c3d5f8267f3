"""Scheduled runs for real: `serve_pipeline` in its own process starts a Prefect server, serves the real
`grasp_run_flow` on an interval schedule on the tiny config, a scheduled run COMPLETES, and SIGTERM leaves
no process behind. No prefect_test_harness here: the ephemeral API cannot schedule.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOYMENT = "grasp-scheduled-test"
INTERVAL_S = 10
SERVE = """
import sys
from pathlib import Path
from flows.runtime.settings import apply_defaults
ws = Path(sys.argv[1])
apply_defaults(ws)
from flows.ops.scheduling import serve_pipeline
serve_pipeline(ws, ws / "params.yaml", interval_s=int(sys.argv[2]), tracking_uri=f"sqlite:///{ws}/mlflow.db",
               deployment_name=sys.argv[3])
"""


class Served:
    """The serve process, the server it recorded, and every descendant PID seen while it ran."""

    def __init__(self, ws: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"  # pick a due run up within 2 s instead of 10
        self.ws, self.log = ws, (ws / "serve.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(ws), str(INTERVAL_S), DEPLOYMENT],
                                     cwd=ws.parent, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # a group we can clean up whatever happens
        self.seen: dict[int, float] = {}
        self.record = self._wait_for_record(timeout_s=150)
        self.deployment = self._wait_for_deployment(timeout_s=120)

    def _wait_for_record(self, timeout_s: float) -> dict:
        from flows.ops.prefect_server import RECORD, _wait_healthy

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if (self.ws / RECORD).exists():
                record = json.loads((self.ws / RECORD).read_text())
                if _wait_healthy(record["url"], deadline - time.monotonic(), lambda: self.proc.poll() is None):
                    return record
            time.sleep(0.5)
        raise AssertionError(f"no healthy server within {timeout_s} s; serve log:\n{self.output()}")

    def _wait_for_deployment(self, timeout_s: float):
        from prefect.exceptions import ObjectNotFound

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with self.client() as client:
                    return client.read_deployment_by_name(f"grasp-run/{DEPLOYMENT}")
            except ObjectNotFound:
                time.sleep(1)
        raise AssertionError(f"{DEPLOYMENT} not registered within {timeout_s} s; serve log:\n{self.output()}")

    def output(self) -> str:
        return (self.ws / "serve.log").read_text(errors="replace")[-4000:]

    def sample(self) -> None:
        """Remember every descendant of the serve process (server, flow-run processes, helpers)."""
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass

    def client(self):
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.record["url"]}):
            return get_client(sync_client=True)

    def log_messages(self, flow_run_id, until, timeout_s: float = 60) -> list[str]:
        """The flow run's log lines in Prefect, read until `until(lines)` holds: the run's process sends its
        last batch as it exits, which may come after its COMPLETED state."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        only_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        deadline = time.monotonic() + timeout_s
        while True:
            with self.client() as client:
                messages = [log.message for log in client.read_logs(log_filter=only_run)]
            if until(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(1)

    def completed_runs(self, timeout_s: float) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

        only_completed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["COMPLETED"])))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.sample()
            with self.client() as client:
                runs = client.read_flow_runs(flow_run_filter=only_completed)
            if done := [r for r in runs if r.deployment_id == self.deployment.id]:
                return done
            time.sleep(2)
        raise AssertionError(f"no COMPLETED run of {DEPLOYMENT} within {timeout_s} s; serve log:\n{self.output()}")

    def terminate(self, timeout_s: float = 90) -> int | None:
        """SIGTERM the serve process (as a user would) and wait for it; SIGKILL its group as a last resort."""
        if self.proc.poll() is None:
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode

    def survivors(self) -> list[psutil.Process]:
        """Seen descendants still alive, plus any process anywhere that still serves or targets our server."""
        alive = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 1 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive + [p for p in psutil.process_iter() if p.pid != os.getpid() and self._targets_server(p)]

    def _targets_server(self, proc: psutil.Process) -> bool:
        try:
            cmdline = proc.cmdline()
            env_url = proc.environ().get("PREFECT_API_URL", "")
        except psutil.Error:
            return False
        return env_url == self.record["url"] or ("server" in cmdline and str(self.record["port"]) in cmdline)


def _cleanup(served: Served) -> None:
    served.terminate(timeout_s=30)
    for proc in served.survivors():  # only processes this test started (or that target its server)
        proc.kill()
    from flows.ops.prefect_server import stop_recorded_server

    stop_recorded_server(served.ws)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("scheduled")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    handle = Served(ws)
    yield handle
    _cleanup(handle)


def test_served_deployment_is_registered_with_its_schedule(served):
    with served.client() as client:
        deployment = client.read_deployment_by_name(f"grasp-run/{DEPLOYMENT}")
    (schedule,) = deployment.schedules
    assert schedule.active and schedule.schedule.interval == timedelta(seconds=INTERVAL_S)
    assert deployment.entrypoint == "flows.pipeline.run.grasp_run_flow"
    assert deployment.parameters["params_path"] == str(served.ws / "params.yaml")
    assert deployment.parameters["workdir"] == str(served.ws)


def test_second_ensure_reuses_the_running_server(served, monkeypatch):
    from flows.ops.prefect_server import RECORD, ensure_prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    handle = ensure_prefect_server(served.ws, timeout_s=60)
    assert not handle.started and handle.pid == served.record["pid"] and handle.url == served.record["url"]
    assert os.environ["PREFECT_API_URL"] == served.record["url"]
    handle.stop()  # a no-op: this call did not start it
    assert psutil.pid_exists(handle.pid)
    assert json.loads((served.ws / RECORD).read_text())["pid"] == handle.pid


def test_a_scheduled_run_executes_the_real_pipeline_and_logs_its_stages_to_prefect(served):
    (run, *_) = served.completed_runs(timeout_s=300)
    assert run.parameters["workdir"] == str(served.ws)
    assert (served.ws / "mlflow.db").exists()
    assert len(list((served.ws / "checkpoints" / "sources").glob("*.safetensors"))) == 2
    messages = served.log_messages(run.id, until=lambda m: any(x.startswith("grasp stage 1 [") for x in m))
    assert any(m.startswith("data valid; target") for m in messages), messages  # what the UI shows of the run


def test_sigterm_stops_serving_and_the_server_it_started(served):
    from flows.ops.prefect_server import RECORD

    served.completed_runs(timeout_s=300)  # so the flow-run processes have been seen too
    server_pid = served.record["pid"]
    assert server_pid in served.seen
    assert served.terminate() == 0, served.output()
    assert not psutil.pid_exists(server_pid)
    assert not (served.ws / RECORD).exists()
    deadline = time.monotonic() + 15  # helpers (e.g. multiprocessing's resource tracker) exit right after
    while (left := served.survivors()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.cmdline()) for p in left]


def test_schedule_and_options_are_checked_before_anything_starts(tmp_path):
    from flows.ops.scheduling import check_schedule, flow_parameters
    from grasp_core.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one"):
        check_schedule(None, None)
    with pytest.raises(ConfigError, match="exactly one"):
        check_schedule("0 3 * * *", 60)
    with pytest.raises(ConfigError, match="not a valid cron"):
        check_schedule("61 * * * *", None)
    with pytest.raises(ConfigError, match="positive"):
        check_schedule(None, 0)
    check_schedule("0 3 * * *", None)
    values = flow_parameters(tmp_path, Path("params.yaml"), auto_promote=False, tracking_uri=None)
    assert Path(values["params_path"]).is_absolute() and values["workdir"] == str(tmp_path.resolve())
    assert values["lock_wait_s"] == 900  # a scheduled tick waits for a manual run instead of failing
    if "auto_promote" not in values:  # the flow has no such parameter (yet): asking for it must fail loudly
        with pytest.raises(ConfigError, match="auto_promote"):
            flow_parameters(tmp_path, Path("params.yaml"), auto_promote=True, tracking_uri=None)


def test_an_explicit_api_url_is_used_as_is(tmp_path, monkeypatch):
    from flows.ops.prefect_server import ensure_prefect_server

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    handle = ensure_prefect_server(tmp_path)
    assert (handle.url, handle.ui_url, handle.started) == ("http://prefect.example:4200/api",
                                                           "http://prefect.example:4200", False)
    assert not (tmp_path / ".grasp").exists()


def test_a_server_that_cannot_start_fails_with_its_log_and_leaves_nothing(tmp_path, monkeypatch):
    from flows.ops.prefect_server import RECORD, ServerStartError, ensure_prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(ServerStartError, match=r"exited before it was healthy; last log lines: .*unable") as err:
        ensure_prefect_server(tmp_path, timeout_s=90)
    pid = int(str(err.value).split("pid ")[1].split(",")[0])
    assert not psutil.pid_exists(pid) and not (tmp_path / RECORD).exists()
    assert "PREFECT_API_URL" not in os.environ


def test_a_flow_waiting_for_the_workspace_lock_says_so_in_its_prefect_logs(tmp_path, prefect_harness):
    """A scheduled tick that finds the workspace held waits (flows/runtime/lock.py); the decision reaches the flow
    run's logs in Prefect (PREFECT_LOGGING_EXTRA_LOGGERS), not only the terminal. The test releases the holder
    once the wait is logged: no timer races it."""
    import logging
    import threading
    from uuid import UUID

    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.runtime import flow_run

    from flows.runtime.lock import RunLock

    waiting = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting up to" in record.getMessage():
                waiting.set()

    @flow(name="lock-probe")
    def probe() -> str:
        with RunLock(tmp_path, wait_s=600, command="grasp run (scheduled)"):
            return str(flow_run.id)

    lock_log, watch = logging.getLogger("flows.runtime.lock"), Watch()
    lock_log.addHandler(watch)
    holder = RunLock(tmp_path, command="grasp run").__enter__()
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(probe()))
    try:
        worker.start()
        assert waiting.wait(timeout=600)
        holder.release()
        worker.join(timeout=600)
    finally:
        holder.release()
        lock_log.removeHandler(watch)
    for handler in lock_log.handlers:
        handler.flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(result[0])])))
    messages = [log.message for log in logs]
    assert any("waiting up to 600 s" in m for m in messages), messages
    assert any("acquired after waiting" in m for m in messages), messages
