"""The promotion gate: a candidate version becomes `champion` only if, re-evaluated now on the current target
VALIDATION split, it is at most `promote.tolerance` behind the champion (and within `promote.max_param_mb`).
Test accuracy is measured and recorded beside it, never gating: the test split stays out of every choice.

Every decision (promoted, refused, noop) is appended to the `promotion_history` tag of both versions, with a
`last_promotion` summary tag, so the registry itself is the audit log. A refusal changes no alias. The
champion alias moves by compare-and-set against the champion the decision was made on: when another
promotion moved it meanwhile, the gate decides again against the new champion (callers also hold the
workspace lock, so this is the second line of defence).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.stores.registry import load_model, open_registry, parse_history, resolve_model_name, resolve_version
from flows.stores.tracking import TrackingError
from grasp_core.config import Config, PromoteConfig
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from flows.stores.tracking import Tracker
    from grasp_core.data import Split

HISTORY_TAG, LAST_TAG = "promotion_history", "last_promotion"
_TAG_LIMIT = 100_000  # mlflow.utils.validation.MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH (3.17): oldest entries go first
_EPS = 1e-9  # accuracies are count ratios; this only absorbs float rounding in `champion - tolerance`
_CAS_ATTEMPTS = 3


class AliasConflictError(GraspError):
    """The champion kept moving under a promotion (exit 75: try again)."""

    exit_code = 75


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and on which numbers (accuracies measured now on the current target splits;
    the validation accuracies gate, the test accuracies are reported only)."""

    model_name: str
    action: str  # promoted | refused | noop
    promoted: bool
    candidate: str  # version number
    champion: str | None  # the champion before the decision; None when there was none
    candidate_val_accuracy: float
    champion_val_accuracy: float | None
    candidate_test_accuracy: float
    champion_test_accuracy: float | None
    candidate_param_mb: float  # MiB of parameters (numel x element size)
    tolerance: float
    max_param_mb: float
    dataset_dvc_md5: str  # md5 data.dvc records now ("" without data.dvc)
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Splits = dict[str, tuple["Split", int]]  # "val" / "test" -> (split, number of classes)


def _target_splits(ws: Path, cfg: Config, target: str) -> Splits:
    """The target's val (gating) and test (reported) splits as on disk now, with their class counts."""
    from grasp_core.data import class_names, read_split

    root = ws / cfg.data.root
    out = {}
    for split in ("val", "test"):
        classes = class_names(root, target, split)
        out[split] = (read_split(root, target, split, classes), len(classes))
    return out


def _score(name: str, version: str, tracking_uri: str, splits: Splits) -> tuple[float, float, float]:
    """(val accuracy, test accuracy, parameter MiB) of one registered version, measured now; only its
    safetensors weights are read."""
    from grasp_core.finetune import evaluate_logits, predict_logits

    model = load_model(f"models:/{name}/{version}", tracking_uri=tracking_uri)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    accuracy = {}
    for which, (split, num_classes) in splits.items():
        logits = predict_logits(model, split)  # (N, K)
        if logits.shape[1] != num_classes:
            raise TrackingError(f"{name} v{version}: the model has {logits.shape[1]} outputs but the current "
                                f"{which} split has {num_classes} classes; promote against the dataset it was "
                                "trained for")
        accuracy[which] = evaluate_logits(logits, split.y, num_classes).accuracy
    return accuracy["val"], accuracy["test"], param_mb


def decide(candidate: str, accuracy: float, param_mb: float, champion: str | None, champion_accuracy: float | None,
           cfg: PromoteConfig) -> tuple[str, str]:
    """(action, message) of the gate on VALIDATION accuracies; the size limit applies even with no champion."""
    keep = f"champion stays v{champion}" if champion else "no champion set"
    if champion == candidate:
        return "noop", f"noop: candidate v{candidate} is already champion (val accuracy {accuracy:.4f})"
    if cfg.max_param_mb > 0 and param_mb > cfg.max_param_mb:
        return "refused", (f"refused: candidate v{candidate} has {param_mb:.4f} MiB of parameters > "
                           f"promote.max_param_mb {cfg.max_param_mb:.4f}; {keep}")
    if champion is None or champion_accuracy is None:
        return "promoted", f"promoted: candidate v{candidate} (val accuracy {accuracy:.4f}) is the first champion"
    numbers = f"champion v{champion} {champion_accuracy:.4f} - tolerance {cfg.tolerance:.4f}"
    if accuracy + _EPS < champion_accuracy - cfg.tolerance:
        return "refused", f"refused: candidate v{candidate} val accuracy {accuracy:.4f} < {numbers}; {keep}"
    return "promoted", (f"promoted: candidate v{candidate} val accuracy {accuracy:.4f} >= {numbers}; "
                        f"champion v{champion} -> v{candidate}")


def compare_and_set_alias(tracker: Tracker, name: str, alias: str, version: str, expected: str | None) -> bool:
    """Point `alias` at `version` only if it still points at `expected` (None: unset); False if it moved."""
    if tracker.get_alias_version(name, alias) != expected:
        return False
    tracker.set_alias(name, alias, version)
    return True


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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _entry(d: PromotionDecision, who: str, auto: bool) -> dict[str, Any]:
    return {"when": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), "who": who,
            "auto": auto, "action": d.action, "model": d.model_name, "candidate": d.candidate,
            "champion": d.champion, "candidate_val_accuracy": round(d.candidate_val_accuracy, 6),
            "champion_val_accuracy": _rounded(d.champion_val_accuracy),
            "candidate_test_accuracy": round(d.candidate_test_accuracy, 6),
            "champion_test_accuracy": _rounded(d.champion_test_accuracy), "gate": "val/accuracy",
            "candidate_param_mb": round(d.candidate_param_mb, 6), "tolerance": d.tolerance,
            "max_param_mb": d.max_param_mb, "dataset_dvc_md5": d.dataset_dvc_md5, "reason": d.message}


def _decision(ws: Path, cfg: Config, name: str, version: str, champion: str | None,
              scores: dict[str, tuple[float, float, float]]) -> PromotionDecision:
    """The gate's decision for `version` against `champion` (scores: version -> (val, test, MiB))."""
    from flows.stores.versioning import read_dvc_hash

    val, test, param_mb = scores[version]
    champ_val, champ_test = (None, None) if champion is None else scores[champion][:2]
    action, message = decide(version, val, param_mb, champion, champ_val, cfg.promote)
    data_dvc = ws / f"{cfg.data.root}.dvc"
    return PromotionDecision(name, action, action == "promoted", version, champion, val, champ_val, test,
                             champ_test, param_mb, cfg.promote.tolerance, cfg.promote.max_param_mb,
                             read_dvc_hash(data_dvc) if data_dvc.is_file() else "", message)


def promote(ws: Path, tracking_uri: str | None, cfg: Config, candidate: str = "@challenger", auto: bool = False,
            actor: str | None = None, model_name: str | None = None) -> PromotionDecision:
    """Re-evaluate candidate and champion on the current target splits and move `champion` if the gate passes
    on validation accuracy (test accuracy is recorded, never gating).

    Args:
        candidate: a version number (`7`) or an alias (`@challenger`).
        auto: a scheduled promotion; recorded as `who: scheduler` unless `actor` is given.
        actor: who decides (default: the login name, `getpass.getuser()`).
        model_name: default: the only registered `grasp-*` model.

    Returns:
        The decision; `promoted` is False for a refusal (no alias moved) and for a noop.
    """
    tracker = open_registry(ws, tracking_uri)
    client, uri = tracker.client, tracker.tracking_uri
    name = resolve_model_name(client, model_name, uri)
    chosen = resolve_version(client, name, candidate)
    version = str(chosen.version)
    splits = _target_splits(ws, cfg, chosen.tags.get("target_domain") or name.removeprefix("grasp-"))
    scores = {version: _score(name, version, uri, splits)}
    for _ in range(_CAS_ATTEMPTS):
        champion = tracker.get_alias_version(name, "champion")
        if champion is not None and champion not in scores:
            scores[champion] = _score(name, champion, uri, splits)
        decision = _decision(ws, cfg, name, version, champion, scores)
        if not decision.promoted or compare_and_set_alias(tracker, name, "champion", version, champion):
            break
    else:
        raise AliasConflictError(f"{name}: the champion alias moved {_CAS_ATTEMPTS} times while promoting "
                                 f"v{version}; nothing was changed, run `grasp promote` again")
    who = actor or ("scheduler" if auto else _user())
    entry = _entry(decision, who, auto)
    for touched in dict.fromkeys([version, champion]):  # both versions, once each
        if touched is not None:
            _append_history(client, name, touched, entry)
    return decision
