"""Stage 0 of a run from scratch: `transfer.start` (first | mean | auto), chosen by grasp_core's own rule.

`grasp_core.methods.grasp_method.start_choice` decides, as in `grasp run --engine core` and the benches. When
the mean wins it is saved once under `checkpoints/targets/<target>/` and stands first in the merge list under
the name `mean` (grasp_core.start.MEAN_NAME) in place of the order's first source, which it holds; the
order's other sources follow. Its registered version names every source it averages (domain and checkpoint
sha256), so lineage, `--verify`, resume and incremental runs see those sources as merged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: `grasp lineage` reads the tags below without loading a model
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.workspace import Workspace
    from grasp_core.config import Config
    from grasp_core.methods import MethodContext

START_SOURCES_TAG = "start_sources"  # JSON [{"domain", "sha256", "md5"}] of the sources a mean start holds


def start_members(tags: Mapping[str, Any]) -> list[dict[str, str]]:
    """The sources a registered mean start averages (from its `start_sources` tag); [] for any other version."""
    try:
        found = json.loads(tags.get(START_SOURCES_TAG) or "[]")
    except ValueError:
        return []
    if not isinstance(found, list):
        return []
    return [m for m in found if isinstance(m, dict) and {"domain", "sha256"} <= m.keys()]


def merged_shas(tags: Mapping[str, Any]) -> set[str]:
    """The source checkpoint one registered version merged as its stage: its source, or for a mean start the
    order's first source, whose place it takes (the others it averages are merged again as later stages, so
    a resumed run still has them to do)."""
    members = start_members(tags)
    return {members[0]["sha256"]} if members else {str(tags.get("source_sha256", ""))}


def held_shas(tags: Mapping[str, Any]) -> set[str]:
    """Every source checkpoint a registered version depends on directly: a mean start's are all it averages."""
    members = start_members(tags)
    return {m["sha256"] for m in members} if members else {str(tags.get("source_sha256", ""))}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def choose_start(cfg: Config, ws: Workspace, target: str, ordered: list[AreaSource],
                 ctx: MethodContext) -> tuple[list[AreaSource], dict[str, str]]:
    """The merge list with the chosen start first, and the tags of stage 0 saying what was chosen and why.

    With `start: first` the list is unchanged and there are no tags. Otherwise the choice is grasp_core's
    (validation only; at most two models alive while the mean is built, and it is freed once saved).
    """
    from flows.pipeline.sources import AreaSource
    from grasp_core.checkpoints import CheckpointHeader, save_checkpoint
    from grasp_core.config import config_hash
    from grasp_core.methods.grasp_method import start_choice
    from grasp_core.start import MEAN_NAME

    if cfg.transfer.start == "first" or not ordered:
        return ordered, {}
    choice = start_choice(ctx, [s.domain for s in ordered])
    tags = {"start_chosen": choice.kind, "start_val_first": f"{choice.first_val_accuracy:.4f}",
            "start_val_mean": f"{choice.mean_val_accuracy:.4f}"}
    if choice.model is None:
        return ordered, tags
    # md5 too: what DVC records for each file, so `grasp lineage --verify` checks a mean's sources as it
    # checks any stage's source
    members = [{"domain": s.domain, "sha256": s.checkpoint.sha256, "md5": _md5(s.checkpoint.path)} for s in ordered]
    tags[START_SOURCES_TAG] = json.dumps(members, separators=(",", ":"))
    # The file's name follows from what made it: the same sources, params and target give the same mean.
    key = hashlib.sha256(f"{tags[START_SOURCES_TAG]}|{config_hash(cfg)}|{target}".encode()).hexdigest()
    like = ordered[0].checkpoint.header
    header = CheckpointHeader(like.arch, like.num_classes, like.classes, like.input_shape,
                              {"domain": MEAN_NAME, "role": "start", "target_domain": target,
                               START_SOURCES_TAG: tags[START_SOURCES_TAG]})
    saved = save_checkpoint(choice.model, ws.targets(target) / f"start-{MEAN_NAME}-{key[:12]}.safetensors", header)
    return [AreaSource(MEAN_NAME, saved), *ordered[1:]], tags
