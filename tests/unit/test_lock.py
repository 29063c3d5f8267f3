"""The workspace run lock: one holder at a time, clear refusals, stale locks taken over, real concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.runtime.lock import RunLock, RunLockedError
from grasp_core.errors import GraspError
from tests.conftest import writes_nothing

pytestmark = pytest.mark.faults


def test_acquire_writes_owner_and_release_removes_it(tmp_path: Path):
    with RunLock(tmp_path, command="grasp run") as lock:
        owner = json.loads(lock.path.read_text())
        assert lock.path == tmp_path / ".grasp" / "run.lock"
        assert owner["pid"] == os.getpid() and owner["command"] == "grasp run"
        assert {"hostname", "started", "pid_started"} <= owner.keys()
    assert not lock.path.exists()
    with RunLock(tmp_path):  # free again
        pass


def test_released_on_exception(tmp_path: Path):
    with pytest.raises(ValueError), RunLock(tmp_path):
        raise ValueError("boom")
    assert not (tmp_path / ".grasp" / "run.lock").exists()


def test_second_acquirer_is_refused_with_the_owner_pid(tmp_path: Path):
    with RunLock(tmp_path):
        started = time.monotonic()
        errors: list[BaseException] = []

        def other_thread() -> None:  # re-entrancy is for the holding thread only
            try:
                with RunLock(tmp_path, wait_s=0.5):
                    pass
            except RunLockedError as caught:
                errors.append(caught)

        worker = threading.Thread(target=other_thread)
        with writes_nothing(tmp_path):  # the refused one leaves our lock file as it was
            worker.start()
            worker.join()
        assert len(errors) == 1
        err = errors[0]
        assert re.search(rf"another grasp run \(pid {os.getpid()}, started \d+ s ago\)", str(err))
        assert err.exit_code == 75  # busy, not bad input
        assert time.monotonic() - started >= 0.5  # it waited before giving up
        assert isinstance(err, GraspError) and "\n" not in str(err)
        assert str(tmp_path / ".grasp" / "run.lock") in str(err)
    assert not (tmp_path / ".grasp" / "run.lock").exists()  # the refused one did not remove ours


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path: Path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / ".grasp" / "run.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": dead.pid, "hostname": socket.gethostname(),
                                "started": "2020-01-01T00:00:00+00:00", "command": "grasp run"}))
    with caplog.at_level("WARNING"), RunLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"pid {dead.pid}" in caplog.text and "stale" in caplog.text


def test_recycled_pid_counts_as_dead(tmp_path: Path):
    path = tmp_path / ".grasp" / "run.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": os.getpid(), "pid_started": 1.0, "hostname": socket.gethostname(),
                                "started": "2020-01-01T00:00:00+00:00", "command": "old"}))
    with RunLock(tmp_path):  # our PID, but a process that started long after the recorded one
        assert json.loads(path.read_text())["command"] != "old"


def test_lock_of_another_host_is_never_stolen(tmp_path: Path):
    path = tmp_path / ".grasp" / "run.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "started": "2020-01-01T00:00:00+00:00"}))
    with writes_nothing(tmp_path, allow={".grasp/run.lock.guard"}):
        with pytest.raises(RunLockedError, match="pid 1 on host elsewhere"):
            RunLock(tmp_path).__enter__()


def _contend(ws: str, barrier, results, release) -> None:
    barrier.wait()
    try:
        with RunLock(Path(ws)):
            results.put(("won", os.getpid()))
            release.wait()  # held until the test has both outcomes: the other one tried while it was held
    except RunLockedError:
        results.put(("refused", os.getpid()))


def test_two_processes_at_once_exactly_one_wins(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded pytest process
    barrier, results, release = ctx.Barrier(2), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, results, release)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=600) for _ in procs]  # a hang guard only
        assert (tmp_path / ".grasp" / "run.lock").exists(), "the winner still holds it"
    finally:
        release.set()
    for proc in procs:
        proc.join(timeout=600)
        assert proc.exitcode == 0
    assert sorted(kind for kind, _ in outcomes) == ["refused", "won"]
    assert not (tmp_path / ".grasp" / "run.lock").exists()


def test_reentrant_in_the_same_process_and_released_by_the_outer_holder(tmp_path: Path):
    with RunLock(tmp_path, command="outer"):
        with RunLock(tmp_path, command="inner"):  # the CLI holds it and runs the flow, which takes it again
            assert (tmp_path / ".grasp" / "run.lock").exists()
        assert (tmp_path / ".grasp" / "run.lock").exists(), "the inner block must not release the outer lock"
    assert not (tmp_path / ".grasp" / "run.lock").exists()


def test_a_waiting_acquirer_takes_the_lock_when_the_holder_releases_it_and_logs_the_wait(tmp_path: Path):
    """A scheduled run (`lock_wait_s`) that finds the workspace held waits, logged, instead of failing; the
    holder is released by the test once the wait has been logged (no timer races the release)."""
    import logging

    waiting, acquired = threading.Event(), threading.Event()
    lines: list[str] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if "waiting up to" in record.getMessage():
                waiting.set()

    log = logging.getLogger("flows.runtime.lock")
    handler = Watch()
    log.addHandler(handler)
    holder = RunLock(tmp_path, command="grasp run").__enter__()
    errors: list[BaseException] = []

    def scheduled() -> None:
        try:
            with RunLock(tmp_path, wait_s=600, command="grasp run (scheduled)"):
                acquired.set()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    worker = threading.Thread(target=scheduled)
    try:
        worker.start()
        assert waiting.wait(timeout=600), lines
        assert not acquired.is_set()  # still held: it waits
        holder.release()
        worker.join(timeout=600)
    finally:
        holder.release()
        log.removeHandler(handler)
    assert errors == [] and acquired.is_set()
    assert any("acquired after waiting" in line for line in lines), lines
    assert not (tmp_path / ".grasp" / "run.lock").exists()


def test_a_guard_held_by_a_stopped_holder_is_busy_not_a_hang(tmp_path):
    """A holder stopped inside its guard (SIGSTOP, a debugger) keeps the flock; a newcomer must not block."""
    import fcntl
    import os

    from flows.runtime.lock import LOCK_NAME, RunLock, RunLockedError

    guard = tmp_path / LOCK_NAME.with_name(LOCK_NAME.name + ".guard")
    guard.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the test holds the guard and releases it itself
    try:
        with pytest.raises(RunLockedError, match="holds this workspace"):
            with RunLock(tmp_path, wait_s=0):
                pass
        assert not (tmp_path / LOCK_NAME).exists()  # nothing taken, nothing written
    finally:
        os.close(fd)
    with RunLock(tmp_path, wait_s=0):  # once released, the lock is free
        assert (tmp_path / LOCK_NAME).exists()
