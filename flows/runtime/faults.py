"""Transient tool faults: what is retried with backoff, and how a fault that persists is reported.

A locked SQLite database (another process writing), an artifact folder that is briefly unwritable or
full, and DVC's repository lock held by another command are transient: the Prefect tasks that touch a
store raise `TransientToolError` for them and retry with exponential backoff (`TOOL_RETRIES`). Anything
else (a bad checkpoint, a missing model) fails at once. When the fault persists, the last error reaches
the CLI as one line naming the store, exit 2, and no registry version or alias has been written.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypedDict

from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

_log = logging.getLogger(__name__)

RETRY_DELAYS_S = [1.0, 2.0, 4.0, 8.0]  # backoff between the attempts of a tool task (4 retries, 15 s in all)
_MARKERS = ("database is locked", "database table is locked", "unable to acquire lock", "no space left",
            "read-only file system", "permission denied", "not a directory", "resource temporarily unavailable",
            "disk i/o error", "connection refused", "timed out")
_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EAGAIN, errno.EBUSY,
           errno.EDQUOT, errno.EIO}


class TransientToolError(GraspError):
    """A store was unavailable (locked, unwritable or full); the task retried with backoff (exit 75)."""

    exit_code = 75


def is_transient(err: BaseException) -> bool:
    """True for errors a later attempt can get past (see the module docstring)."""
    if isinstance(err, TransientToolError):
        return True
    if isinstance(err, OSError) and err.errno in _ERRNOS:
        return True
    text = f"{type(err).__name__}: {err}".lower()
    return any(marker in text for marker in _MARKERS)


@contextmanager
def transient_faults(store: str) -> Iterator[None]:
    """Re-raise transient failures inside the block as TransientToolError naming `store`; others unchanged."""
    try:
        yield
    except TransientToolError:
        raise
    except Exception as err:
        if not is_transient(err):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TransientToolError(f"{store}: {first} (retried {len(RETRY_DELAYS_S)} times with backoff "
                                 f"{', '.join(f'{d:g}' for d in RETRY_DELAYS_S)} s; fix the store and run again)"
                                 ) from err


def retry_transient(task: Task[..., object], task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry only transient tool faults (and say so: Prefect's own run logs are
    quiet without --verbose)."""
    error = getattr(state, "data", None)
    if not isinstance(error, TransientToolError):
        return False
    attempt = getattr(task_run, "run_count", 1)
    if attempt <= len(RETRY_DELAYS_S):
        _log.warning("%s; attempt %d failed, retrying in %g s", str(error).split(" (retried")[0], attempt,
                     RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S)) - 1])
    return True


class RetryOptions(TypedDict):
    """Keyword arguments of `prefect.task` for a task that touches a store."""

    retries: int
    retry_delay_seconds: list[float]
    retry_condition_fn: Callable[[Task[..., object], TaskRun, State], bool]


TOOL_RETRIES: RetryOptions = {"retries": len(RETRY_DELAYS_S), "retry_delay_seconds": RETRY_DELAYS_S,
                              "retry_condition_fn": retry_transient}
