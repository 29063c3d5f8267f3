"""grasp_core: Gradient-Aligned Sequential Parameter Transfer (arXiv 2606.14900), pure library.

Imports torch, torchvision, numpy, safetensors and pyyaml only; orchestration, tracking and
versioning live in `flows/`. The public names below load lazily, so `grasp --help` and
`grasp_core.errors` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "METHODS": "grasp_core.methods", "MethodContext": "grasp_core.methods",
    "MethodResult": "grasp_core.methods", "MethodOutput": "grasp_core.methods", "run_method": "grasp_core.methods",
    "Config": "grasp_core.config", "load_config": "grasp_core.config",
    "CheckpointMismatchError": "grasp_core.errors", "ConfigError": "grasp_core.errors",
    "DataLayoutError": "grasp_core.errors", "GraspError": "grasp_core.errors",
    "UnknownArchitectureError": "grasp_core.errors",
    "StepResult": "grasp_core.grasp", "grasp_step": "grasp_core.grasp", "initial_step": "grasp_core.grasp",
    "run_grasp": "grasp_core.grasp", "target_loaders": "grasp_core.grasp",
    "POLICIES": "grasp_core.transfer", "Moved": "grasp_core.transfer", "ALIGNMENTS": "grasp_core.align",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'grasp_core' has no attribute '{name}'")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
