"""`grasp predict`: class and probabilities of image files for a registered version, on PyTorch or ONNX Runtime.

Images go through grasp_core.data.load_images, the preprocessing training uses (decode, the model's channel
mode and size, [0, 1] floats), so a file from the training set gets exactly the logits evaluation saw.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from grasp_core.data.importer import IMPORT_SUFFIXES
from grasp_core.errors import GraspError

_SHOWN_CLASSES = 10  # the table lists every class's probability up to this many classes, else the top 3


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly, plus every image under named folders (recursively, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMPORT_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise GraspError(f"{path}: no such file or folder; give image files or folders of images")
    if not files:
        raise GraspError(f"{', '.join(map(str, paths))}: no images ({', '.join(IMPORT_SUFFIXES)}) found")
    return files


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities of (N, K) logits, computed in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict_paths(ws: Path, tracking_uri: str | None, ref: str, paths: list[Path], model_name: str | None = None,
                  onnx: bool = False) -> dict[str, Any]:
    """Predict every image under `paths` with version `ref`; ONNX exports the version to a temporary file first."""
    from flows.ops.deploy import fetch_version
    from flows.ops.export import as_numpy, load_runner, logits_in_batches, write_export
    from grasp_core.data import load_images

    files = collect_images(paths)
    fetched = fetch_version(ws, tracking_uri, ref, model_name)
    images = as_numpy(load_images(files, fetched.header.input_shape))  # (N, C, H, W)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            path = write_export(fetched.model, fetched.header.input_shape, "onnx", Path(tmp) / "model.onnx")
            runner = load_runner("onnx", path)
        else:
            runner = load_runner("pytorch", model=fetched.model)
        probs = softmax(logits_in_batches(runner, images))  # (N, K)
    classes = list(fetched.header.classes)
    rows = [{"file": str(f), "class": classes[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(classes, map(float, p), strict=True))}
            for f, p in zip(files, probs, strict=True)]
    return {"model": fetched.name, "version": fetched.version, "runtime": "onnx" if onnx else "pytorch",
            "classes": classes, "predictions": rows}


def format_predictions(result: dict[str, Any]) -> str:
    """A table: file, class, its probability, then each class's probability (or the top 3 of many)."""
    from flows.reports.tables import format_rows

    many = len(result["classes"]) > _SHOWN_CLASSES
    rows = []
    for row in result["predictions"]:
        probs = row["probabilities"]
        shown = sorted(probs, key=probs.get, reverse=True)[:3] if many else list(probs)
        rows.append({"file": row["file"], "class": row["class"], "p": f"{row['probability']:.4f}",
                     "probabilities": " ".join(f"{c}:{probs[c]:.3f}" for c in shown)})
    head = f"{result['model']} v{result['version']} on {result['runtime']}: {len(rows)} image(s)"
    return head + "\n" + format_rows(rows, ("file", "class", "p", "probabilities"))
