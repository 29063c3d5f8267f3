"""Where the core computes: the device and mixed precision. Both are where/how choices that flows pass in
(env `GRASP_DEVICE` / `GRASP_AMP`, flag `grasp run --device/--amp`); the core never reads the environment.

Models and in-memory splits are moved once (`model.to(device)`, `DomainData.to(device)`), so the batches
`Batches` slices from them are already on the device and no training step copies data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from grasp_core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
_KNOB = "set GRASP_DEVICE or pass --device"


def is_mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


_AVAILABLE: dict[str, Callable[[], bool]] = {"cuda": torch.cuda.is_available, "mps": is_mps_available}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; a named accelerator that is absent is an error, never a fallback."""
    if name not in DEVICES:
        raise ConfigError(f"device '{name}' is unknown; choose one of: {', '.join(DEVICES)} ({_KNOB})")
    if name == "auto":
        return torch.device(next((d for d in ("cuda", "mps") if _AVAILABLE[d]()), "cpu"))
    if name in _AVAILABLE and not _AVAILABLE[name]():
        raise ConfigError(f"device '{name}' was asked for but torch sees none here; use auto or cpu ({_KNOB})")
    return torch.device(name)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast on CUDA when `amp`; a no-op otherwise. bfloat16 needs no gradient scaler.

    autocast is thread-local: enter it in the thread that runs the core call (inside a task, not around a flow).
    """
    if not amp:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"mixed precision (GRASP_AMP=1 or --amp) needs CUDA; the device is '{device}'")
    return torch.autocast("cuda", dtype=torch.bfloat16)
