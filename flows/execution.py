"""Where/how the core computes, from the environment: `GRASP_DEVICE` (auto | cpu | cuda | mps, default auto:
CUDA, then MPS, then CPU) and `GRASP_AMP` (1: bfloat16 autocast, CUDA only). `grasp run --device/--amp` set them,
so Prefect tasks of the same process see the same choice. Not in params.yaml: they say where, not what.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from grasp_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "GRASP_DEVICE"
AMP_ENV = "GRASP_AMP"


def device() -> torch.device:
    from grasp_core.device import resolve_device  # torch: imported when first needed, not by the CLI's parser

    return resolve_device(os.environ.get(DEVICE_ENV, "auto") or "auto")


def amp() -> bool:
    value = os.environ.get(AMP_ENV, "0").strip().lower()
    if value not in ("0", "1", "false", "true", ""):
        raise ConfigError(f"{AMP_ENV}={value!r} must be 0 or 1")
    return value in ("1", "true")


def compute() -> AbstractContextManager[object]:
    """Mixed precision around a core call when `GRASP_AMP` asks for it (enter it inside the task's thread)."""
    from grasp_core.device import autocast

    return autocast(device(), amp())


def apply(device_name: str | None, use_amp: bool) -> None:
    """Record CLI choices in the environment, where Prefect tasks of this process find them."""
    if device_name:
        os.environ[DEVICE_ENV] = device_name
    if use_amp:
        os.environ[AMP_ENV] = "1"


def check() -> str:
    """Resolve the device and the AMP choice now, so a bad one fails before any work; describes them."""
    compute()
    return f"{device()}{' + bf16 autocast' if amp() else ''}"
