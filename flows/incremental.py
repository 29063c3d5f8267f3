"""Incremental runs: start from the champion and merge only the sources its lineage lacks.

GRASP is sequential, so a new source is one more stage on top of the current champion: the old
sources are never reloaded, and memory stays that of two models however long the lineage is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.sources_area import AreaSource
from flows.steps import StepArtifact
from grasp_core.checkpoints import SavedCheckpoint, file_sha256, read_header


@dataclass(frozen=True)
class MergePlan:
    parent: StepArtifact | None  # the champion's checkpoint to merge into; None = start from scratch
    parent_version: str  # "" when starting from scratch
    start_stage: int
    to_merge: list[AreaSource]
    merged_before: int  # sources already in the champion's lineage


def lineage_sources(tracker, model_name: str, version: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Tags of `version` and each parent up to stage 0 (newest first)."""
    by_version = {v["version"]: v["tags"] for v in tracker.versions(model_name)}
    chain, current = [], version
    while current:
        tags = by_version[current]
        chain.append({**tags, "version": current})
        current = tags.get("parent_version", "")
    return chain


def plan_merge(tracker, model_name: str, area: list[AreaSource], out_dir: Path,  # type: ignore[no-untyped-def]
               full: bool = False) -> MergePlan:
    """Which sources to merge, into what: everything from scratch, or the champion plus what is new."""
    from flows.tracking import download_weights

    champion = None if full else tracker.get_alias_version(model_name, "champion")
    if champion is None:
        return MergePlan(None, "", 0, area, 0)
    chain = lineage_sources(tracker, model_name, champion)
    merged = {tags.get("source_sha256") for tags in chain}
    new = [s for s in area if s.checkpoint.sha256 not in merged]
    if not new:
        return MergePlan(None, champion, 0, [], len(chain))
    path = download_weights(f"models:/{model_name}/{champion}", out_dir / f"champion-v{champion}.safetensors",
                            tracker.tracking_uri)
    parent = StepArtifact(SavedCheckpoint(path, file_sha256(path), read_header(path)), None,
                          chain[0].get("chain_sha256", ""))
    return MergePlan(parent, champion, int(chain[0]["stage"]) + 1, new, len(chain))
