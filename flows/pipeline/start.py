"""Stage 0 of a run from scratch: `transfer.start` (first | mean | auto), chosen by grasp_core's own rule.

`grasp_core.methods.grasp_method.start_choice` decides, as in `grasp run --engine core` and the benches. When
the mean wins it is saved once under `checkpoints/targets/<target>/` and stands first in the merge list under
the name `mean` (grasp_core.start.MEAN_NAME) in place of the order's first source, which it holds; the
order's other sources follow. Its registered version names every source it averages (domain and checkpoint
sha256, md5) in a tag, or past MLflow's tag cap in a JSON artifact of its run (flows/stores/start_sources.py),
so lineage, `--verify`, resume and incremental runs see those sources as merged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.stores.start_sources import ARTIFACT_DIR, ARTIFACT_TAG, START_SOURCES_TAG, encode_members, start_members

if TYPE_CHECKING:  # torch-free at import: `grasp lineage` reads the tags below without loading a model
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.workspace import Workspace
    from grasp_core.config import Config
    from grasp_core.methods import MethodContext

__all__ = ["START_SOURCES_TAG", "choose_start", "held_shas", "members_file", "merged_domains", "merged_shas",
           "start_artifacts", "start_held_shas", "start_members"]


def merged_shas(tags: Mapping[str, Any]) -> set[str]:
    """The source checkpoint one registered version merged as its stage: its source, or for a mean start the
    order's first source, whose place it takes (the others it averages are merged again as later stages, so
    a resumed run still has them to do). `tags` as `flows.stores.start_sources.resolve_start_sources` gives them."""
    members = start_members(tags)
    return {members[0]["sha256"]} if members else {str(tags.get("source_sha256", ""))}


def held_shas(tags: Mapping[str, Any]) -> set[str]:
    """Every source checkpoint a registered version depends on directly: a mean start's are all it averages."""
    members = start_members(tags)
    return {m["sha256"] for m in members} if members else {str(tags.get("source_sha256", ""))}


def start_held_shas(chain: list[dict[str, str]]) -> frozenset[str]:
    """The source checkpoints a lineage's mean start averages (none without one): a resumed run's remaining
    sources are among them, an incremental run's new ones are not (grasp_core.start.merge_config)."""
    return frozenset(m["sha256"] for tags in chain for m in start_members(tags))


def merged_domains(source: AreaSource) -> str | list[str]:
    """The source domains one entry of a run's merge list merges: for the mean start, every source it averages
    (its checkpoint's header lists them, whatever its tags hold), else its own domain."""
    from grasp_core.start import MEAN_NAME

    members = start_members(source.checkpoint.header.extra) if source.domain == MEAN_NAME else []
    return [m["domain"] for m in members] or source.domain


def members_file(mean_checkpoint: Path) -> Path:
    """Where a mean start's source list is written beside its checkpoint when it outgrows a tag."""
    return mean_checkpoint.with_suffix(".sources.json")


def start_artifacts(start_tags: Mapping[str, str], mean_checkpoint: Path) -> dict[str, Path]:
    """Artifacts stage 0's run must log for its tags to be whole: the source list when a pointer stands in for it."""
    return {ARTIFACT_DIR: members_file(mean_checkpoint)} if start_tags.get(ARTIFACT_TAG) else {}


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
    listed = json.dumps(members, separators=(",", ":"))
    # The file's name follows from what made it: the same sources, params and target give the same mean.
    key = hashlib.sha256(f"{listed}|{config_hash(cfg)}|{target}".encode()).hexdigest()
    path = ws.targets(target) / f"start-{MEAN_NAME}-{key[:12]}.safetensors"
    listed, member_tags = encode_members(members, members_file(path).name)
    tags.update(member_tags)
    if ARTIFACT_TAG in member_tags:  # too long for a tag: stage 0's run logs it as an artifact (start_artifacts)
        members_file(path).parent.mkdir(parents=True, exist_ok=True)
        members_file(path).write_text(listed)
    like = ordered[0].checkpoint.header
    header = CheckpointHeader(like.arch, like.num_classes, like.classes, like.input_shape,
                              {"domain": MEAN_NAME, "role": "start", "target_domain": target,
                               START_SOURCES_TAG: listed})
    saved = save_checkpoint(choice.model, path, header)
    return [AreaSource(MEAN_NAME, saved), *ordered[1:]], tags
