"""The pyfunc model of a registered grasp version, logged as code (MLflow models-from-code).

MLflow copies this file into the model and runs it on log and on load, so nothing is pickled: the weights are the
safetensors artifact `weights`, read by grasp_core's checked loader. Serving it needs the `grasp` package installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from grasp_core.checkpoints import load_checkpoint


class GraspCheckpointModel(mlflow.pyfunc.PythonModel):
    """Logits of a grasp checkpoint for a float image batch."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.header = load_checkpoint(Path(context.artifacts["weights"]))
        self.model.eval()

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Images (N, C, H, W) in [0, 1] -> logits (N, num_classes), float32."""
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))  # (N, C, H, W)
        with torch.no_grad():
            return self.model(x).numpy()  # (N, num_classes)


mlflow.models.set_model(GraspCheckpointModel())
