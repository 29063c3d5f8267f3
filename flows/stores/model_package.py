"""What a registered version's pyfunc model carries so it runs outside this project: the model code
(flows/stores/mlflow_model.py), grasp_core itself as a code path, pinned requirements, a tensor signature and an
input example. With these, `mlflow models serve -m models:/grasp-<target>@champion` builds its own
environment (MLflow's default virtualenv manager) on any machine that reaches a package index.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grasp_core

if TYPE_CHECKING:
    from grasp_core.checkpoints import CheckpointHeader

MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc model, logged as code (no pickle)
GRASP_CORE = Path(grasp_core.__file__).parent
# what mlflow_model.py and grasp_core import (grasp_core's own list: its package docstring and ruff.toml)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "safetensors", "numpy", "pyyaml", "pillow")
ARCH_REQUIREMENTS = {"mobilevit_xxs": ("timm",), "mobilevit_xs": ("timm",)}  # archs built by an optional extra


def requirements(arch: str) -> list[str]:
    """Pinned pip requirements for a model of `arch`, at the versions installed here.

    A local version label (`2.14.1+cpu`) is dropped: package indexes publish the public version only.
    """
    names = (*REQUIREMENTS, *ARCH_REQUIREMENTS.get(arch, ()))
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def packaged_code(dest: Path) -> Path:
    """A clean copy of grasp_core under `dest` (no bytecode caches or lint settings) to log as a code path."""
    return Path(shutil.copytree(GRASP_CORE, dest / "grasp_core",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "ruff.toml")))


def pyfunc_kwargs(checkpoint: Path, header: CheckpointHeader, scratch: Path) -> dict[str, Any]:
    """Keyword arguments of `mlflow.pyfunc.log_model` for a checkpoint; `scratch` holds the code copy until then."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *header.input_shape))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, header.num_classes))]))
    example = np.zeros((1, *header.input_shape), dtype=np.float32)  # (1, C, H, W): a blank image
    return {"python_model": str(MODEL_CODE), "artifacts": {"weights": str(checkpoint)},
            "code_paths": [str(packaged_code(scratch))], "pip_requirements": requirements(header.arch),
            "signature": signature, "input_example": example}
