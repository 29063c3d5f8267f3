"""A workspace run lock: overlapping runs (a schedule firing while a manual run is going) must never merge
the same source twice or write the same checkpoints at once.

`<ws>/.grasp/run.lock` holds JSON {pid, pid_started, hostname, started, command}. A lock whose owner has
died on this host is stale and taken over. The check-and-create step runs under an `flock` on a guard
file, so two processes that both find the same stale lock cannot both take it over (an unlink race that
O_CREAT|O_EXCL alone does not close). The kernel drops the flock when its holder dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import psutil

from grasp_core.errors import GraspError

LOCK_NAME = Path(".grasp") / "run.lock"
POLL_S = 0.2
_HELD: dict[str, int] = {}  # lock path -> thread holding it in this process (re-entrancy for that thread only)
_log = logging.getLogger(__name__)


class RunLockedError(GraspError):
    """Another live grasp run holds the workspace (exit 75: busy, try again later)."""

    exit_code = 75


GUARD_WAIT_S = 2.0  # the guard is held for a file write; longer means its holder is stopped or hung


class GuardBusy(Exception):
    """Another process held the guard for longer than the caller would wait."""


@contextmanager
def exclusive(guard: Path, wait_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive `flock` on `guard` (created if missing) for the duration of the block.

    Args:
        wait_s: give up with `GuardBusy` after this many seconds (None: wait as long as it takes). A holder
            that is stopped (SIGSTOP, a debugger) or hung keeps its flock, and a blocking wait would hang too.
    """
    guard.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    raise GuardBusy(str(guard)) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def process_started(pid: int) -> float | None:
    """Creation time of process `pid` (epoch seconds), or None when it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def is_owner_alive(owner: dict) -> bool:
    """True unless the owner is provably dead: same host, and its PID is gone or now names another process."""
    if owner.get("hostname") != socket.gethostname():
        return True  # cannot see another host's processes: never steal its lock
    started = process_started(int(owner.get("pid", -1)))
    if started is None:
        return False
    recorded = owner.get("pid_started")
    return recorded is None or abs(started - float(recorded)) < 1.0  # a recycled PID has a later start


def read_owner(path: Path) -> dict | None:
    """The lock file's JSON, or None when it is missing or unreadable."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict) -> str:
    """`pid 1234, started 35 s ago` (plus the host when it is not this one)."""
    try:
        age_s = (datetime.now(UTC) - datetime.fromisoformat(owner["started"])).total_seconds()
        age = f"started {age_s:.0f} s ago"
    except (KeyError, TypeError, ValueError):
        age = "start time unknown"
    host = "" if owner.get("hostname") == socket.gethostname() else f" on host {owner.get('hostname')}"
    return f"pid {owner.get('pid')}{host}, {age}"


class RunLock:
    """Context manager holding `<ws>/.grasp/run.lock` for one run.

    Args:
        ws: the workspace folder.
        wait_s: how long to wait for a live owner to finish before raising RunLockedError (0: fail at once).
        command: recorded for whoever finds the lock (default: this process's command line).
    """

    def __init__(self, ws: Path, wait_s: float = 0, command: str | None = None) -> None:
        self.path = Path(ws) / LOCK_NAME
        self.wait_s = wait_s
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._mine: dict | None = None

    def __enter__(self) -> RunLock:
        start = time.monotonic()
        waited = False
        while (owner := self._try_acquire()) is not None:
            if time.monotonic() - start >= self.wait_s:
                raise RunLockedError(f"{self.path}: another grasp run ({describe_owner(owner)}) holds this "
                                     f"workspace (`{owner.get('command', '?')}`"
                                     f"{f', waited {self.wait_s:g} s' if waited else ''}); wait for it or stop it")
            if not waited:
                _log.warning("%s: held by %s (%s); waiting up to %g s", self.path, describe_owner(owner),
                             owner.get("command", "?"), self.wait_s)
                waited = True
            time.sleep(POLL_S)
        if waited:
            _log.warning("%s: acquired after waiting %.1f s", self.path, time.monotonic() - start)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _try_acquire(self) -> dict | None:
        """Take the lock and return None, or return the live owner's record."""
        try:
            return self._acquire_under_guard()
        except GuardBusy:  # someone is taking or releasing the lock right now, or is stopped while doing so
            return read_owner(self.path) or {"pid": "?", "command": "a grasp command holding its guard"}

    def _acquire_under_guard(self) -> dict | None:
        with exclusive(self.path.with_name(self.path.name + ".guard"), wait_s=GUARD_WAIT_S):
            owner = read_owner(self.path)
            if owner is not None and self._is_this_process(owner):
                return None  # re-entrant: the CLI holds it and runs the flow, which takes it again
            if owner is not None and is_owner_alive(owner):
                return owner
            if self.path.exists():
                _log.warning("%s: taking over a stale lock (%s, no longer running)", self.path,
                             describe_owner(owner) if owner else "unreadable")
                self.path.unlink()
            self._mine = self._record()
            _HELD[str(self.path.resolve())] = threading.get_ident()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as out:
                json.dump(self._mine, out)
                out.flush()
                os.fsync(out.fileno())
        return None

    def _is_this_process(self, owner: dict) -> bool:
        """Held by this very thread (an outer RunLock on the same path): re-entrant."""
        return owner.get("pid") == os.getpid() and _HELD.get(str(self.path.resolve())) == threading.get_ident()

    def _record(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "pid_started": process_started(pid), "hostname": socket.gethostname(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "command": self.command}

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        if self._mine is None:
            return
        with exclusive(self.path.with_name(self.path.name + ".guard")):
            if read_owner(self.path) == self._mine:
                self.path.unlink()
            _HELD.pop(str(self.path.resolve()), None)
        self._mine = None
