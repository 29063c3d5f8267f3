"""Fault suite: transient store faults are retried with backoff (Prefect task retries); persistent ones fail
clearly with nothing registered. Real MLflow on SQLite, real DVC; the faults are real (a held SQLite lock,
a held DVC lock, a file where the artifact folder should be)."""

from __future__ import annotations

import fcntl
import logging
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from flows.runtime.faults import RETRY_DELAYS_S, TransientToolError

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]
FAST = {"retry_delay_seconds": [0.2] * len(RETRY_DELAYS_S)}  # same retries and condition, shorter waits


@pytest.fixture(scope="module")
def done(tmp_path_factory, prefect_harness):
    """A workspace after one pipeline run: tracker, summary."""
    from flows.pipeline.run import run_pipeline
    from flows.runtime.options import RunOptions
    from flows.stores.tracking import Tracker
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("transient")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    summary = run_pipeline(RunOptions(ws, ws / "params.yaml", tracking_uri=f"sqlite:///{ws}/mlflow.db", quiet=True))
    return ws, Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db"), summary


@dataclass
class Outcome:
    completed: bool
    attempts: int  # Prefect's run_count of the task run
    result: Any  # the return value, or the exception of the last attempt


def _in_flow(task, *args, **options) -> Outcome:
    """Run one task inside a flow and report how it ended (never raises)."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="fault-probe")
    def probe():
        state = task.with_options(**options)(*args, return_state=True)
        return {"completed": state.is_completed(), "id": str(state.state_details.task_run_id),
                "result": state.result(raise_on_failure=False)}

    out = probe()
    with get_client(sync_client=True) as client:
        attempts = client.read_task_run(out["id"]).run_count
    return Outcome(out["completed"], attempts, out["result"])


@contextmanager
def _release_after_a_failed_attempt(release: Callable[[], None]) -> Iterator[threading.Event]:
    """Call `release` when the task's first attempt has failed, inside the retry condition's "retrying" log call:
    that runs in the task's own thread before the retry delay starts, so the fault is gone before the next
    attempt whatever the machine's load (no timer, no second thread racing the retry)."""
    failed = threading.Event()

    class OnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage() and not failed.is_set():
                failed.set()
                release()

    handler, log = OnRetry(), logging.getLogger("flows.runtime.faults")
    log.addHandler(handler)
    try:
        yield failed
    finally:
        log.removeHandler(handler)


def test_backoff_is_exponential_and_only_transient_errors_retry():
    from flows.runtime.faults import is_transient, retry_transient

    assert RETRY_DELAYS_S == sorted(RETRY_DELAYS_S) and RETRY_DELAYS_S[-1] >= 4 * RETRY_DELAYS_S[0]
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(NotADirectoryError(20, "Not a directory"))
    assert not is_transient(ValueError("bad checkpoint"))

    class State:
        data = TransientToolError("x")

    assert retry_transient(None, None, State()) and not retry_transient(None, None, type("S", (), {"data": 1})())


def test_locked_sqlite_database_is_retried_until_free(done):
    from flows.pipeline.tasks import alias_task

    ws, tracker, summary = done
    lock = sqlite3.connect(ws / "mlflow.db", timeout=0, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database until an attempt has failed
    try:
        with _release_after_a_failed_attempt(lock.rollback):
            out = _in_flow(alias_task, tracker, summary.model_name, summary.versions[0], **FAST)
    finally:
        lock.close()
    assert out.completed, out.result
    assert out.attempts == 2  # released inside the first retry decision
    assert tracker.get_alias_version(summary.model_name, "challenger") == summary.versions[0]
    tracker.set_alias(summary.model_name, "challenger", summary.versions[-1])


def test_dvc_lock_held_by_another_command_is_retried(done):
    from flows.pipeline.tasks import dvc_track_task
    from flows.pipeline.workspace import Workspace

    ws, _, _ = done
    (ws / "data" / "2020" / "train" / "0" / "extra.png").write_bytes(
        next((ws / "data" / "2020" / "train" / "0").glob("*.png")).read_bytes())  # a change for `dvc add`
    fd = open(ws / ".dvc" / "tmp" / "lock", "a+")  # noqa: SIM115 - held across the retry
    fcntl.flock(fd.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until DVC's first attempt has failed
    try:
        with _release_after_a_failed_attempt(fd.close):
            out = _in_flow(dvc_track_task, Workspace(ws), "data", **FAST)
    finally:
        fd.close()
    assert out.completed, out.result
    assert out.attempts == 2  # released inside the first retry decision
    assert out.result.nfiles == sum(1 for p in (ws / "data").rglob("*") if p.is_file())


def test_unwritable_artifact_folder_recovers_or_fails_clearly_with_no_version(done):
    from flows.pipeline.tasks import register_task

    ws, tracker, summary = done
    step, artifacts = summary.steps[-1], ws / "mlartifacts"
    backup = ws / "mlartifacts.bak"
    before = tracker.versions(summary.model_name)

    def block() -> None:  # a file where the artifact folder should be (root ignores permission bits)
        artifacts.rename(backup)
        artifacts.write_text("not a folder")

    def unblock() -> None:
        artifacts.unlink()
        backup.rename(artifacts)

    classes = [str(i) for i in range(len(step.result.confusion))]  # one name per row of its confusion matrix
    args = (tracker, summary.parent_run_id, summary.model_name, step, classes, {"stage": "x"},
            ws / "reports" / "fault")
    block()
    with _release_after_a_failed_attempt(unblock) as failed:  # the fault lasts exactly one attempt
        out = _in_flow(register_task, *args, **FAST)
    assert failed.is_set(), "the first attempt did not fail: the fault was not in its way"
    assert out.completed, out.result
    assert out.attempts == 2  # released inside the first retry decision
    after = tracker.versions(summary.model_name)
    # the step is registered once: a retry (or a step registered before) re-uses its version, never a duplicate
    assert str(out.result) in {v["version"] for v in after}
    assert len(before) <= len(after) <= len(before) + 1

    before = tracker.versions(summary.model_name)
    block()
    try:
        out = _in_flow(register_task, *args, **FAST)
    finally:
        unblock()
    assert not out.completed
    assert isinstance(out.result, TransientToolError)
    assert re.search(f"MLflow store .*{artifacts.name}.*retried", str(out.result)), out.result
    assert out.attempts == len(RETRY_DELAYS_S) + 1
    assert tracker.versions(summary.model_name) == before, "a failed registration leaves no version"
    shutil.rmtree(ws / "reports" / "fault", ignore_errors=True)
