"""Where/how the core computes, as a value: `Compute(device, amp, threads)`. The CLI builds it once (RunOptions:
`--device/--amp/--threads`, else the user's GRASP_DEVICE / GRASP_AMP / GRASP_THREADS, read there and only
there) and hands it down: to tasks as a parameter, to Dask workers as an argument, to served runs as flow
parameters. Nothing below the CLI reads or writes the environment for it. Not in params.yaml: it says where,
not what.

The thread count is the one exception that travels as an environment variable, because it is torch's own
setting: `apply_threads` writes OMP_NUM_THREADS before torch is imported, so every torch thread of the process
(Prefect's task threads) and of a local Dask cluster's workers (which inherit the environment) follows it.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Compute:
    """Where and how the core computes; hashable, picklable, and cheap to pass to every task."""

    device: str = "auto"  # auto | cpu | cuda | mps (auto: CUDA, then MPS, then CPU)
    amp: bool = False  # bfloat16 autocast, CUDA only
    threads: int | None = None  # torch CPU threads; None: $OMP_NUM_THREADS if set, else default_threads()

    def torch_device(self) -> torch.device:
        """The device `device` names; an absent accelerator is a ConfigError, never a fallback."""
        from grasp_core.device import resolve_device  # torch: imported when first needed, not by the CLI's parser

        return resolve_device(self.device)

    def autocast(self) -> AbstractContextManager[object]:
        """Mixed precision around a core call when `amp` asks for it (enter it inside the task's thread)."""
        from grasp_core.device import autocast

        return autocast(self.torch_device(), self.amp)

    def check(self) -> str:
        """Resolve the device and the AMP choice now, so a bad one fails before any work; describes them."""
        self.autocast()
        return f"{self.torch_device()}{' + bf16 autocast' if self.amp else ''}"


AUTO = Compute()  # the default where a caller (a benchmark, a test) names no device: auto, full precision


def default_threads() -> int:
    """The cores this process may use, less one for the tools; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def apply_threads(compute: Compute) -> None:
    """Set torch's thread count of this process: OMP_NUM_THREADS, which torch reads for every thread it computes
    in, so call this before torch is imported (the CLI does). A user's own OMP_NUM_THREADS stands unless
    `compute.threads` is given."""
    if compute.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(compute.threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    if "torch" in sys.modules:  # already imported (a caller in-process): its count is set, this thread only
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
