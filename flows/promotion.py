"""The promotion gate: a candidate version becomes `champion` only if, re-evaluated now on the current target
test split, it is at most `promote.tolerance` behind the champion (and within `promote.max_param_mb`).

Every decision (promoted, refused, noop) is appended to the `promotion_history` tag of both versions, with a
`last_promotion` summary tag, so the registry itself is the audit log. A refusal changes no alias.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.operations import open_registry, parse_history, resolve_model_name, resolve_version
from flows.tracking import TrackingError, load_model
from grasp_core.config import Config, PromoteConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from grasp_core.data import Split

HISTORY_TAG, LAST_TAG = "promotion_history", "last_promotion"
_TAG_LIMIT = 100_000  # mlflow.utils.validation.MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH (3.17): oldest entries go first
_EPS = 1e-9  # accuracies are count ratios; this only absorbs float rounding in `champion - tolerance`


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and on which numbers (accuracies measured now, on the current test split)."""

    model_name: str
    action: str  # promoted | refused | noop
    promoted: bool
    candidate: str  # version number
    champion: str | None  # the champion before the decision; None when there was none
    candidate_test_accuracy: float
    champion_test_accuracy: float | None
    candidate_param_mb: float  # MiB of parameters (numel x element size)
    tolerance: float
    max_param_mb: float
    dataset_dvc_md5: str  # md5 data.dvc records now ("" without data.dvc)
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _target_test(ws: Path, cfg: Config, target: str) -> tuple[Split, int]:
    """The target's test split as on disk now, and its number of classes."""
    from grasp_core.data import class_names, read_split

    root = ws / cfg.data.root
    classes = class_names(root, target, "test")
    return read_split(root, target, "test", classes), len(classes)


def _score(name: str, version: str, tracking_uri: str, test: tuple[Split, int]) -> tuple[float, float]:
    """(test accuracy now, parameter MiB) of one registered version; only its safetensors weights are read."""
    from grasp_core.finetune import evaluate_logits, predict_logits

    model = load_model(f"models:/{name}/{version}", tracking_uri=tracking_uri)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    split, num_classes = test
    logits = predict_logits(model, split)  # (N, K)
    if logits.shape[1] != num_classes:
        raise TrackingError(f"{name} v{version}: the model has {logits.shape[1]} outputs but the current test "
                            f"split has {num_classes} classes; promote against the dataset it was trained for")
    return evaluate_logits(logits, split.y, num_classes).accuracy, param_mb


def decide(candidate: str, accuracy: float, param_mb: float, champion: str | None, champion_accuracy: float | None,
           cfg: PromoteConfig) -> tuple[str, str]:
    """(action, message) of the gate; the size limit applies even when there is no champion yet."""
    keep = f"champion stays v{champion}" if champion else "no champion set"
    if champion == candidate:
        return "noop", f"noop: candidate v{candidate} is already champion (test accuracy {accuracy:.4f})"
    if cfg.max_param_mb > 0 and param_mb > cfg.max_param_mb:
        return "refused", (f"refused: candidate v{candidate} has {param_mb:.4f} MiB of parameters > "
                           f"promote.max_param_mb {cfg.max_param_mb:.4f}; {keep}")
    if champion is None or champion_accuracy is None:
        return "promoted", f"promoted: candidate v{candidate} (test accuracy {accuracy:.4f}) is the first champion"
    numbers = f"champion v{champion} {champion_accuracy:.4f} - tolerance {cfg.tolerance:.4f}"
    if accuracy + _EPS < champion_accuracy - cfg.tolerance:
        return "refused", f"refused: candidate v{candidate} test accuracy {accuracy:.4f} < {numbers}; {keep}"
    return "promoted", (f"promoted: candidate v{candidate} test accuracy {accuracy:.4f} >= {numbers}; "
                        f"champion v{champion} -> v{candidate}")


def _append_history(client: MlflowClient, name: str, version: str, entry: dict[str, Any]) -> None:
    history = parse_history(client.get_model_version(name, version).tags.get(HISTORY_TAG)) + [entry]
    text = json.dumps(history)
    while len(text) > _TAG_LIMIT and len(history) > 1:
        history.pop(0)
        text = json.dumps(history)
    client.set_model_version_tag(name, version, HISTORY_TAG, text)
    client.set_model_version_tag(name, version, LAST_TAG, f"{entry['when']} {entry['who']}: {entry['reason']}")


def _user() -> str:
    try:
        return getpass.getuser()  # $LOGNAME, $USER, ... then the password database
    except (OSError, KeyError):
        return "unknown"


def _entry(d: PromotionDecision, who: str, auto: bool) -> dict[str, Any]:
    return {"when": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), "who": who,
            "auto": auto, "action": d.action, "model": d.model_name, "candidate": d.candidate,
            "champion": d.champion, "candidate_test_accuracy": round(d.candidate_test_accuracy, 6),
            "champion_test_accuracy": None if d.champion_test_accuracy is None else round(d.champion_test_accuracy, 6),
            "candidate_param_mb": round(d.candidate_param_mb, 6), "tolerance": d.tolerance,
            "max_param_mb": d.max_param_mb, "dataset_dvc_md5": d.dataset_dvc_md5, "reason": d.message}


def promote(ws: Path, tracking_uri: str | None, cfg: Config, candidate: str = "@challenger", auto: bool = False,
            actor: str | None = None, model_name: str | None = None) -> PromotionDecision:
    """Re-evaluate candidate and champion on the current target test split and move `champion` if the gate passes.

    Args:
        candidate: a version number (`7`) or an alias (`@challenger`).
        auto: a scheduled promotion; recorded as `who: scheduler` unless `actor` is given.
        actor: who decides (default: the login name, `getpass.getuser()`).
        model_name: default: the only registered `grasp-*` model.

    Returns:
        The decision; `promoted` is False for a refusal (no alias moved) and for a noop.
    """
    from flows.versioning import read_dvc_hash

    tracker = open_registry(ws, tracking_uri)
    client, uri = tracker.client, tracker.tracking_uri
    name = resolve_model_name(client, model_name, uri)
    chosen = resolve_version(client, name, candidate)
    version, champion = str(chosen.version), tracker.get_alias_version(name, "champion")
    test = _target_test(ws, cfg, chosen.tags.get("target_domain") or name.removeprefix("grasp-"))
    accuracy, param_mb = _score(name, version, uri, test)
    champion_accuracy = None if champion is None else (
        accuracy if champion == version else _score(name, champion, uri, test)[0])
    action, message = decide(version, accuracy, param_mb, champion, champion_accuracy, cfg.promote)
    data_dvc = ws / f"{cfg.data.root}.dvc"
    decision = PromotionDecision(name, action, action == "promoted", version, champion, accuracy, champion_accuracy,
                                 param_mb, cfg.promote.tolerance, cfg.promote.max_param_mb,
                                 read_dvc_hash(data_dvc) if data_dvc.is_file() else "", message)
    if decision.promoted:
        tracker.set_alias(name, "champion", version)
    who = actor or ("scheduler" if auto else _user())
    entry = _entry(decision, who, auto)
    for touched in dict.fromkeys([version, champion]):  # both versions, once each
        if touched is not None:
            _append_history(client, name, touched, entry)
    return decision
