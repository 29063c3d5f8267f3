"""Reading the model registry: open it, resolve a model name and a version (number or @alias), and walk a
version's lineage back to data and checkpoint hashes as plain rows (lists of dicts, JSON-ready).

Rendering and the re-hash audit of a lineage live in flows/ops/lineage.py, the status page in flows/ops/status.py,
promotion through the gate in flows/pipeline/promotion.py, the lineage plot in flows/reports/lineage_plot.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flows.stores.tracking import _MODEL_URI, Tracker, TrackingError, _client, _mlflow, resolve_tracking_uri
from grasp_core.names import check_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

SOURCES_DIR = Path("checkpoints") / "sources"
_TAGS = ("target_domain", "source_domain", "parent_version", "checkpoint_sha256", "chain_sha256", "source_sha256",
         "source_dvc_md5", "base_sha256", "dataset_dvc_md5", "sources_dvc_md5", "params_sha256", "code_commit",
         "flow_run_id", "policy", "skipped_sources", "resumed_from", "rejected",
         "start_chosen", "start_val_first", "start_val_mean", "start_sources",  # stage 0's `transfer.start`
         "start_sources_artifact", "start_sources_count", "start_sources_sha256")  # its list, outside a tag
_METRICS = {"val_accuracy": "val/accuracy", "test_accuracy": "test/accuracy", "transfer_tensors": "transfer/tensors",
            "transfer_tensors_frac": "transfer/tensors_frac", "transfer_params_frac": "transfer/params_frac",
            "peak_rss_bytes": "memory/peak_rss_bytes", "models_alive": "memory/models_alive",
            "param_bytes_alive": "memory/param_bytes_alive", "param_sized_multiple": "memory/param_sized_multiple",
            "step_s": "time/step_s"}
_COUNTS = ("transfer_tensors", "peak_rss_bytes", "models_alive", "param_bytes_alive")  # logged as floats
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# ---------------------------------------------------------------------------------------------- registry access

def open_registry(ws: Path, tracking_uri: str | None) -> Tracker:
    """A Tracker on the workspace's store; refuses a SQLite file that does not exist instead of creating one."""
    uri = resolve_tracking_uri(ws, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"{uri}: no MLflow database there; run `grasp run` first or pass --tracking-uri")
    return Tracker(ws, tracking_uri=uri)


def resolve_model_name(client: MlflowClient, model_name: str | None, where: str) -> str:
    """`model_name` if registered, else the only registered `grasp-*` model; errors list what exists."""
    names = sorted(m.name for m in client.search_registered_models(filter_string="name LIKE 'grasp-%'"))
    if model_name is not None:
        check_name(model_name, "--model")
        if model_name not in names and not _exists(client, model_name):
            raise TrackingError(f"{where}: no registered model '{model_name}'; registered: "
                                f"{', '.join(names) or 'none'}")
        return model_name
    if not names:
        raise TrackingError(f"{where}: no registered grasp-* model; run `grasp run` first")
    if len(names) > 1:
        raise TrackingError(f"{where}: several registered models ({', '.join(names)}); pick one with --model NAME")
    return names[0]


def _exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in _MISSING:
            raise
        return False
    return True


def aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version -> sorted aliases (search results leave `aliases` empty on SQL stores, so read the model)."""
    out: dict[str, list[str]] = {}
    for alias, version in sorted(client.get_registered_model(name).aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


def resolve_version(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """A version number (`7`, `v7`) or an alias (`@champion`) of model `name`."""
    from mlflow.exceptions import MlflowException

    number = ref.strip().removeprefix("v")
    if not ref.startswith("@") and not number.isdigit():
        raise TrackingError(f"'{ref}': not a version reference; use a number (7) or an alias (@champion)")
    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, number)
    except MlflowException as err:
        if err.error_code not in _MISSING:
            raise
    known = ", ".join(f"@{a} -> v{v}" for v, aliases in aliases_by_version(client, name).items() for a in aliases)
    raise TrackingError(f"{name}: no version or alias '{ref}'; aliases: {known or 'none'}; "
                        "see versions with `grasp lineage`")


def iso_utc(ms: int | None) -> str:
    """Milliseconds since the epoch (MLflow timestamps) as ISO 8601 UTC, seconds precision."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_history(raw: str | None) -> list[dict[str, Any]]:
    """The `promotion_history` tag as a list; an unparsable value is kept visible, never dropped."""
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except ValueError:
        return [{"unparsed": raw}]
    return history if isinstance(history, list) else [{"unparsed": raw}]


# ---------------------------------------------------------------------------------------------- lineage

def version_row(client: MlflowClient, mv: ModelVersion, aliases: dict[str, list[str]]) -> dict[str, Any]:
    """One registered version as a flat JSON-ready dict: tags, its run's metrics, aliases, promotions."""
    from flows.stores.start_sources import resolve_start_sources

    tags = resolve_start_sources(client, mv.run_id, mv.tags) if mv.run_id else dict(mv.tags)  # a mean's source list
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    stage = tags.get("stage", "")
    row: dict[str, Any] = {"model_name": mv.name, "version": str(mv.version),
                           "aliases": aliases.get(str(mv.version), []),
                           "stage": int(stage) if stage.isdigit() else None, "run_id": mv.run_id or "",
                           "created": iso_utc(mv.creation_timestamp)}
    row.update({key: tags.get(key, "") for key in _TAGS})
    row.update({key: metrics.get(metric) for key, metric in _METRICS.items()})
    row.update({key: int(row[key]) for key in _COUNTS if row[key] is not None})
    row["promotion_history"] = parse_history(tags.get("promotion_history"))
    return row


def walk_lineage(client: MlflowClient, name: str, mv: ModelVersion) -> list[dict[str, Any]]:
    """Rows from `mv` back along `parent_version` tags to the first stage, newest first."""
    aliases, rows, seen = aliases_by_version(client, name), [], set()
    while True:
        if str(mv.version) in seen:
            raise TrackingError(f"{name}: parent_version tags loop at v{mv.version}; fix the tag on that version")
        seen.add(str(mv.version))
        rows.append(version_row(client, mv, aliases))
        parent = mv.tags.get("parent_version", "")
        if not parent:
            return rows
        try:
            mv = resolve_version(client, name, parent)
        except TrackingError:
            raise TrackingError(f"{name}: v{mv.version} names parent_version {parent}, which is not in the "
                                "registry (deleted?); the lineage is broken there") from None


def lineage(ws: Path, tracking_uri: str | None, ref: str = "@champion",
            model_name: str | None = None) -> list[dict[str, Any]]:
    """The chain of registered versions that produced `ref`, newest first (see `version_row` for the keys).

    Args:
        ref: a version number (`7`) or an alias (`@champion`).
        model_name: default: the only registered `grasp-*` model.
    """
    tracker = open_registry(ws, tracking_uri)
    name = resolve_model_name(tracker.client, model_name, tracker.tracking_uri)
    return walk_lineage(tracker.client, name, resolve_version(tracker.client, name, ref))


# ---------------------------------------------------------------------------------------------- weights

def load_model(model_uri: str, tracking_uri: str | None = None) -> nn.Module:
    """Our own nn.Module (e.g. `SmallCNN`, in eval mode) for `models:/<name>@<alias>` or `models:/<name>/<version>`.

    Downloads only the version's safetensors `weights` and loads it with grasp_core's checked loader; nothing
    is unpickled. The tracking URI is the argument, else $MLFLOW_TRACKING_URI, else ./mlflow.db.
    """
    from grasp_core.checkpoints import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_checkpoint(download_weights(model_uri, Path(tmp) / "weights.safetensors", tracking_uri))
    return model.eval()


def download_weights(model_uri: str, dest: Path, tracking_uri: str | None = None) -> Path:
    """Copy a registered version's safetensors weights to `dest` (checked against `checkpoint_sha256`)."""
    from grasp_core.checkpoints import file_sha256

    uri = resolve_tracking_uri(Path.cwd(), tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"{uri}: no MLflow database there; pass tracking_uri or set MLFLOW_TRACKING_URI")
    client = _client(uri)
    version = _model_version(client, model_uri, uri)
    root = client.get_model_version_download_uri(version.name, version.version)  # where the files are
    download = _mlflow().artifacts.download_artifacts
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel = yaml.safe_load(Path(download(artifact_uri=f"{root}/MLmodel", dst_path=tmp)).read_text())
        weights = mlmodel["flavors"]["python_function"]["artifacts"]["weights"]["path"]
        path = Path(download(artifact_uri=f"{root}/{weights}", dst_path=tmp))
        expected = version.tags.get("checkpoint_sha256")
        if expected is not None and file_sha256(path) != expected:
            raise TrackingError(f"{model_uri}: downloaded weights do not match the version's checkpoint_sha256")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), dest)
    return dest


def _model_version(client: MlflowClient, model_uri: str, tracking_uri: str) -> ModelVersion:
    match = _MODEL_URI.match(model_uri)
    if match is None:
        raise TrackingError(f"'{model_uri}': not a registry URI; use models:/<name>@<alias> or "
                            "models:/<name>/<version>")
    name, alias, number = match["name"], match["alias"], match["version"]
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except _mlflow().MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise TrackingError(f"'{model_uri}': not in the registry at {tracking_uri}; check the model name, "
                            "version or alias") from None
