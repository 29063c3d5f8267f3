"""SIGTERM and SIGINT during `grasp run`: stop cleanly, so the next run resumes exactly.

Without a handler SIGTERM ends the process at once: the MLflow parent run stays RUNNING, the workspace
lock stays on disk (taken over later as stale) and the children keep going (DVC, the GX worker, the local
Prefect server, Dask workers). Here both signals raise KeyboardInterrupt in the main thread, so every
`finally` and `except` on the way out runs: the parent run is ended KILLED (`Tracker.parent_run`), Prefect
marks the flow run crashed, and the lock is released. Then the children of this very process (found by
PID with psutil, whoever started them) are terminated, and the process exits 128 + signal without waiting
for worker threads still inside a stage (their writes are atomic: a stage cut short leaves no file).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 5.0  # how long children get to exit after SIGTERM before SIGKILL
_STOPPING = threading.Event()  # set by the handler: Prefect may re-wrap the interrupt on its way out


def stop_children(grace_s: float = GRACE_S) -> list[int]:
    """Terminate every live descendant of this process (SIGTERM, then SIGKILL after `grace_s`); their PIDs."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [c.pid for c in children]


@contextmanager
def stop_cleanly_on_signals(command: str) -> Iterator[None]:
    """Run the block; on SIGTERM/SIGINT unwind it, stop our children and exit 128 + signal (see module doc).

    Put it outside the workspace lock, so the lock is released while unwinding, before the exit.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if not received:  # a second signal while unwinding must not cut the clean-up short
            received.append(signum)
            _STOPPING.set()
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    except BaseException:
        if not received and not _STOPPING.is_set():
            raise  # an ordinary error: the CLI reports it
        signum = received[0] if received else signal.SIGINT
        stopped = stop_children()
        print(f"grasp: stopped: {command} got {signal.Signals(signum).name}; stopped {len(stopped)} child "
              "process(es), MLflow run marked KILLED, workspace lock released; the next `grasp run` resumes",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)  # worker threads may still be inside a stage: do not wait for them
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
