"""A registered version as something to deploy: fetch its checked weights, export it with a parity check on
the target's test split (logged on the version's MLflow run), and read its target's test images.

`grasp export`, `grasp predict` and `grasp bench deploy` start here; the formats live in flows/ops/export.py.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.ops.export import PARITY_ATOL, ExportError, as_numpy, latency_ms, load_runner, logits_in_batches, parity
from flows.stores.registry import open_registry, resolve_model_name, resolve_version

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from flows.stores.tracking import Tracker
    from grasp_core.checkpoints import CheckpointHeader
    from grasp_core.config import Config

LATENCY_ITERS = 50  # batch-1 calls timed by `grasp export` (the bench times more)


@dataclass(frozen=True)
class Fetched:
    """One registered version, loaded: its PyTorch model (eval, CPU) and what its checkpoint header says."""

    name: str
    version: str
    run_id: str  # "" for a version registered without a run
    target: str  # the target domain (version tag `target_domain`; "" when the version has none)
    model: nn.Module
    header: CheckpointHeader
    tracker: Tracker


def fetch_version(ws: Path, tracking_uri: str | None, ref: str, model_name: str | None,
                  weights_dir: Path | None = None) -> Fetched:
    """Load version `ref` (a number or @alias) of the workspace's grasp model from the registry; its
    safetensors file is kept as `weights_dir/weights.safetensors` when `weights_dir` is given."""
    from flows.stores.registry import download_weights
    from grasp_core.checkpoints import load_checkpoint

    tracker = open_registry(ws, tracking_uri)
    name = resolve_model_name(tracker.client, model_name, str(ws))
    mv = resolve_version(tracker.client, name, ref)
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_weights(f"models:/{name}/{mv.version}", Path(weights_dir or tmp) / "weights.safetensors",
                                   tracker.tracking_uri)
        model, header = load_checkpoint(weights)
    return Fetched(name=name, version=str(mv.version), run_id=mv.run_id or "", target=mv.tags.get("target_domain", ""),
                   model=model.eval(), header=header, tracker=tracker)


def target_test_images(ws: Path, cfg: Config, fetched: Fetched) -> tuple[np.ndarray, np.ndarray]:
    """The version's target test split as (images (N, C, H, W) float32, labels (N,)), classes in its order."""
    from grasp_core.data import read_split

    if not fetched.target:
        raise ExportError(f"{fetched.name} v{fetched.version}: no target_domain tag; cannot find its test split")
    root = ws / cfg.data.root
    if not (root / fetched.target / "test").is_dir():
        raise ExportError(f"{root / fetched.target / 'test'}: the target's test split is missing; run `grasp data` "
                          "(or `grasp restore`) in the workspace first")
    split = read_split(root, fetched.target, "test", list(fetched.header.classes))
    if tuple(split.x.shape[1:]) != fetched.header.input_shape:
        raise ExportError(f"{root / fetched.target}: images are {tuple(split.x.shape[1:])}, the model expects "
                          f"{fetched.header.input_shape}; export against the data it was trained on")
    return as_numpy(split.x), split.y.numpy()


def export_version(ws: Path, tracking_uri: str | None, cfg: Config, ref: str, fmt: str, out: Path,
                   model_name: str | None = None) -> dict[str, Any]:
    """Export version `ref` to `out`, check parity on its test split, and log file, parity, size and latency
    on the version's run. `out` is written only when parity holds (max |logit diff| <= PARITY_ATOL and
    identical predictions); otherwise ExportError and no file."""
    from flows.ops.export import write_export

    fetched = fetch_version(ws, tracking_uri, ref, model_name)
    if not fetched.run_id:
        raise ExportError(f"{fetched.name} v{fetched.version}: registered without an MLflow run, so there is no "
                          "run to log the export on; export a version made by `grasp run`")
    images, _ = target_test_images(ws, cfg, fetched)
    staged = out.with_name(f".{out.name}.{os.getpid()}.staged")
    try:
        write_export(fetched.model, fetched.header.input_shape, fmt, staged)
        report = measure_export(fetched.model, fmt, staged, images)
        if not report["parity_ok"]:
            raise ExportError(f"{out}: {fmt} export of {fetched.name} v{fetched.version} differs from PyTorch "
                              f"(max |logit diff| {report['max_abs_logit_diff']:.3g} > {PARITY_ATOL:g} or "
                              f"agreement {report['agreement_frac']:.4f} < 1); nothing written")
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    report = {"model": fetched.name, "version": fetched.version, "format": fmt, "file": str(out),
              "size_bytes": out.stat().st_size, **report}
    log_export(fetched.tracker, fetched.run_id, fmt, out, report)
    return report


def measure_export(model: nn.Module, fmt: str, path: Path, images: np.ndarray) -> dict[str, Any]:
    """Parity of the file at `path` against `model` on `images`, and both runtimes' batch-1 p50 latency."""
    reference, exported = load_runner("pytorch", model=model), load_runner(fmt, path)
    check = parity(logits_in_batches(reference, images), logits_in_batches(exported, images))
    one = images[:1]
    return {"test_images": check.images, "max_abs_logit_diff": check.max_abs_logit_diff,
            "agreement_frac": check.agreement_frac, "parity_ok": check.ok,
            "latency_p50_ms_b1": latency_ms(exported, one, LATENCY_ITERS)[0],
            "pytorch_latency_p50_ms_b1": latency_ms(reference, one, LATENCY_ITERS)[0]}


def log_export(tracker: Tracker, run_id: str, fmt: str, out: Path, report: dict[str, Any]) -> None:
    """The exported file under `export/` and its figures as `export/<fmt>/<metric>` on the version's run."""
    keys = ("size_bytes", "max_abs_logit_diff", "agreement_frac", "test_images", "latency_p50_ms_b1",
            "pytorch_latency_p50_ms_b1")
    tracker.client.log_artifact(run_id, str(out), "export")
    tracker.log_metrics(run_id, {f"export/{fmt}/{key}": float(report[key]) for key in keys},
                        tags={f"export.{fmt}.file": out.name})


def format_export(report: dict[str, Any]) -> str:
    """Two lines for the terminal: what was written, and its parity and latency."""
    return (f"wrote {report['file']} ({report['format']}, {report['size_bytes']:,} bytes) from {report['model']} "
            f"v{report['version']}\nparity on {report['test_images']} test images: max |logit diff| "
            f"{report['max_abs_logit_diff']:.2e} (<= {PARITY_ATOL:g}), agreement {report['agreement_frac']:.2%}; "
            f"p50 batch 1: {report['latency_p50_ms_b1']:.3f} ms vs PyTorch {report['pytorch_latency_p50_ms_b1']:.3f} "
            "ms; logged on the version's MLflow run")
