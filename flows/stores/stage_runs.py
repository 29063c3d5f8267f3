"""What a stage's MLflow run carries besides its final figures: epoch curves, the dataset as an MLflow input,
a plain-words description of its version, and the look-ups that let a retried registration re-use what a
failed attempt created (its run, its LoggedModel, its version) instead of making a second one."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, LoggedModel, Metric

    from grasp_core.grasp import StepResult

DATASET_NAME = "grasp-data"
SPLITS = ("train", "val", "test")
POINTERS = "dvc"  # the artifact folder of a stage run that holds its .dvc files


def epoch_history(result: StepResult) -> dict[str, list[float]]:
    """The stage's fine-tuning curves: metric key -> one value per epoch."""
    return {"finetune/train_loss": list(result.train_loss_history),
            "finetune/val_accuracy": list(result.val_history)}


def history_metrics(history: Mapping[str, list[float]]) -> list[Metric]:
    """MLflow metrics at steps 1..N, one per epoch."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    return [Metric(key, float(value), now_ms, epoch) for key, values in history.items()
            for epoch, value in enumerate(values, start=1)]


def child_run(client: MlflowClient, experiment_id: str, parent: str, run_name: str,
              owner_tags: Mapping[str, str]) -> tuple[str, bool]:
    """(run id, created now): the nested run `run_name` of `parent` that an earlier attempt created (marked
    RUNNING again), else a new one."""
    found = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                               f"attributes.run_name = '{run_name}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, False
    run = client.create_run(experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent, **owner_tags})
    return run.info.run_id, True


def version_of_run(client: MlflowClient, model_name: str, run_id: str) -> str | None:
    """The version of `model_name` already registered from `run_id`, if any."""
    found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return str(found[0].version) if found else None


def pending_logged_model(client: MlflowClient, experiment_id: str, run_id: str) -> LoggedModel | None:
    """A LoggedModel of `run_id` that a failed attempt left PENDING, if any."""
    models = client.search_logged_models(experiment_ids=[experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'")
    return next((m for m in models if str(m.status).endswith("PENDING")), None)


def dataset_input(data_root: Path, dvc_md5: str, dvcfile: Path, target: str) -> DatasetInput:
    """The dataset as an MLflow input: DVC's md5 as its digest, the .dvc file as its source, domains and
    split sizes as its profile (so the MLflow UI lists it on every run trained on it)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    sizes = _split_sizes(str(data_root.resolve()), dvc_md5)
    profile = {"dvc_md5": dvc_md5, "target": target, "domains": list(sizes), "split_sizes": sizes}
    dataset = Dataset(name=DATASET_NAME, digest=dvc_md5.removesuffix(".dir")[:36], source_type="dvc",
                      source=json.dumps({"dvc_file": str(dvcfile), "path": str(data_root)}),
                      profile=json.dumps(profile))
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value="training")])


@lru_cache(maxsize=4)
def _split_sizes(root: str, dvc_md5: str) -> dict[str, dict[str, int]]:
    """domain -> split -> images, counted once per dataset version (`dvc_md5` keys the cache)."""
    sizes: dict[str, dict[str, int]] = {}
    for domain in sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name[0] not in "._"):  # no _base
        sizes[domain.name] = {s: sum(1 for _ in (domain / s).rglob("*.png")) for s in SPLITS}
    return sizes


def version_description(result: StepResult, target: str, parent_version: str) -> str:
    """One paragraph in plain words: what this version is and how it did."""
    if result.stage == 0:
        what = f"Stage 0 of the GRASP merge for target domain {target}: source {result.source_name} fine-tuned " \
               "on the target."
    else:
        what = (f"Stage {result.stage} of the GRASP merge for target domain {target}: source {result.source_name} "
                f"merged into version {parent_version or '(none)'}, {len(result.transferred)} of "
                f"{len(result.scores)} tensors transferred, then fine-tuned on the target.")
        if result.rejected:
            what += " The merge lowered validation accuracy, so the target kept its previous weights."
    return (f"{what} Validation accuracy {result.val_accuracy:.1%}, test accuracy {result.test_accuracy:.1%} "
            f"after {result.steps} training steps.")


def log_pointers(dvcfiles: list[Path], ws: Path, out_dir: Path) -> Path:
    """Copy `dvcfiles` (inside `ws`) under `out_dir`, keeping their paths relative to `ws`; returns the folder
    to log as the stage run's `dvc/` artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for dvcfile in dvcfiles:
        rel = dvcfile.resolve().relative_to(ws.resolve())
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dvcfile, out_dir / rel)
    return out_dir


def step_metrics(result: StepResult) -> dict[str, float]:
    """A GRASP stage as MLflow metrics: accuracy, memory, transfer, alignment statistics and timings."""
    metrics = {"val/accuracy": result.val_accuracy, "test/accuracy": result.test_accuracy,
               "finetune/steps": result.steps, "transfer/tensors": len(result.transferred),
               "transfer/tensors_frac": result.tensors_frac, "transfer/params": result.params_transferred,
               "transfer/params_frac": result.params_frac, "time/step_s": result.wall_s}
    metrics.update({f"test/class_{i}_accuracy": acc for i, acc in enumerate(result.per_class_accuracy)})
    metrics.update({f"memory/{key}": value for key, value in asdict(result.memory).items()})
    metrics.update({f"time/{key}_s": seconds for key, seconds in result.timings_s.items()})
    if scores := list(result.scores.values()):
        metrics.update({"align/mean": statistics.fmean(scores), "align/min": min(scores), "align/max": max(scores),
                        "align/median": statistics.median(scores)})
    return {key: float(value) for key, value in metrics.items()}


def alignment_csv(result: StepResult, path: Path) -> Path:
    """Write one row per parameter tensor: param_name, alignment (blank at stage 0), transferred, numel."""
    moved = set(result.transferred)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["param_name", "alignment", "transferred", "numel"])
        for name, numel in result.param_numels.items():
            score = result.scores.get(name)
            writer.writerow([name, "" if score is None else repr(score), name in moved, numel])
    return path


def log_batch(client: MlflowClient, run_id: str, metrics: Mapping[str, float], params: Mapping[str, str],
               tags: Mapping[str, str]) -> None:
    """One or more `log_batch` calls within MLflow's per-call limits (100 params or tags, 1000 metrics)."""
    from mlflow.entities import Metric, Param, RunTag

    now_ms = int(time.time() * 1000)
    param_rows = [Param(k, v) for k, v in params.items()]
    tag_rows = [RunTag(k, str(v)) for k, v in tags.items()]
    metric_rows = [Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
    for i in range(0, max(len(param_rows), len(tag_rows), 1), 100):
        client.log_batch(run_id, params=param_rows[i: i + 100], tags=tag_rows[i: i + 100])
    for i in range(0, len(metric_rows), 1000):
        client.log_batch(run_id, metrics=metric_rows[i: i + 1000])
