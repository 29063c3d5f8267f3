"""Where/how the core computes, from the environment: `GRASP_DEVICE` (auto | cpu | cuda | mps, default auto:
CUDA, then MPS, then CPU), `GRASP_AMP` (1: bfloat16 autocast, CUDA only) and `GRASP_THREADS` (torch CPU threads
of training and merging; default: the cores less one). `grasp run --device/--amp/--threads` set them, so Prefect
tasks of the same process see the same choice. Not in params.yaml: they say where, not what.

Why one core is left out by default: the operated pipeline runs its tool work (DVC hashing the data, MLflow
logging, GX) beside training, and torch's OpenMP threads that share a core with such a process wait on each
other at every op (measured on 2 cores under the flow: base training 0.8 s alone, 8.5 s beside DVC).
Source training stays pinned to one thread whatever this says (grasp_core/threads.py: same bytes on every
runner).
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from grasp_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "GRASP_DEVICE"
AMP_ENV = "GRASP_AMP"
THREADS_ENV = "GRASP_THREADS"


def device() -> torch.device:
    from grasp_core.device import resolve_device  # torch: imported when first needed, not by the CLI's parser

    return resolve_device(os.environ.get(DEVICE_ENV, "auto") or "auto")


def amp() -> bool:
    value = os.environ.get(AMP_ENV, "0").strip().lower()
    if value not in ("0", "1", "false", "true", ""):
        raise ConfigError(f"{AMP_ENV}={value!r} must be 0 or 1")
    return value in ("1", "true")


def default_threads() -> int:
    """The cores this process may use, less one for the tools; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def threads() -> int | None:
    """`GRASP_THREADS`, else None (OMP_NUM_THREADS, when set, else `default_threads()`)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_ENV}={value!r} must be a whole number >= 1 (torch CPU threads)")
    return int(value)


def compute() -> AbstractContextManager[object]:
    """Mixed precision around a core call when `GRASP_AMP` asks for it (enter it inside the task's thread)."""
    from grasp_core.device import autocast

    return autocast(device(), amp())


def apply(device_name: str | None, use_amp: bool, n_threads: int | None = None) -> None:
    """Record CLI choices in the environment, where Prefect tasks of this process find them.

    The thread count goes to OMP_NUM_THREADS, which torch reads for every thread it computes in, so call
    this before torch is imported (the CLI does); a user's own OMP_NUM_THREADS stands unless
    `--threads`/GRASP_THREADS is given.
    """
    if device_name:
        os.environ[DEVICE_ENV] = device_name
    if use_amp:
        os.environ[AMP_ENV] = "1"
    if n_threads is not None:
        os.environ[THREADS_ENV] = str(n_threads)
    chosen = threads()
    if chosen is not None:
        os.environ["OMP_NUM_THREADS"] = str(chosen)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    if "torch" in sys.modules:  # already imported (a caller in-process): its count is set, this thread only
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def check() -> str:
    """Resolve the device and the AMP choice now, so a bad one fails before any work; describes them."""
    compute()
    return f"{device()}{' + bf16 autocast' if amp() else ''}"
