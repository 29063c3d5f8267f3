"""Weights parked on disk instead of in memory: the rollback snapshot and the best-validation copy.

A parked copy costs one safetensors write and, when it is needed back, one read; it keeps the copy out of
the process's memory, so a GRASP stage holds at most weights, grads and two AdamW moments (4 parameter-sized
copies) at its peak. The bytes round-trip exactly, so restoring from disk equals restoring from memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn


class WeightStash:
    """One parked copy of a model's weights and buffers, in a private temporary folder.

    `put` replaces the copy, `restore` loads it into a model of the same architecture, `close` (or the
    context manager) deletes the folder. The folder lives under the system's temporary directory.
    """

    def __init__(self, prefix: str = "grasp-stash-") -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(self._dir.name) / "weights.safetensors"
        self.full = False

    def put(self, model: nn.Module) -> None:
        """Write `model`'s state (parameters and buffers) over the parked copy."""
        save_model(model, str(self.path), force_contiguous=True)  # tied tensors written once
        self.full = True

    def restore(self, model: nn.Module) -> None:
        """Load the parked copy into `model`, on the device its parameters live on."""
        if not self.full:
            raise RuntimeError("WeightStash.restore before put: nothing is parked")
        device = next(iter(model.state_dict().values())).device
        load_model(model, str(self.path), strict=True, device=str(device))  # strict: a mismatch raises

    def close(self) -> None:
        self._dir.cleanup()
        self.full = False

    def __enter__(self) -> WeightStash:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
