"""Incremental runs: start from the champion and merge only the sources its lineage lacks.

GRASP is sequential, so a new source is one more stage on top of the current champion: the old
sources are never reloaded, and memory stays that of two models however long the lineage is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flows.pipeline.sources import AreaSource
from flows.pipeline.stage import StepArtifact
from flows.pipeline.start import held_shas, merged_shas
from grasp_core.checkpoints import SavedCheckpoint, file_sha256, read_header


@dataclass(frozen=True)
class MergePlan:
    parent: StepArtifact | None  # the champion's checkpoint to merge into; None = start from scratch
    parent_version: str  # "" when starting from scratch
    start_stage: int
    to_merge: list[AreaSource]
    merged_before: int  # sources already in the champion's lineage
    resumed: bool = False  # `parent` is the last version an interrupted run registered, not the champion
    ended_runs: tuple[str, ...] = ()  # MLflow runs of dead processes, marked KILLED by this plan


def lineage_sources(tracker, model_name: str, version: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Tags of `version` and each parent up to stage 0 (newest first)."""
    by_version = {v["version"]: v["tags"] for v in tracker.versions(model_name)}
    chain, current = [], version
    while current:
        tags = by_version[current]
        chain.append({**tags, "version": current})
        current = tags.get("parent_version", "")
    return chain


def chain_shas(chain: list[dict[str, str]], held: bool = False) -> set[str]:
    """The source checkpoints (sha256) a lineage merged as stages (a mean start stands for the order's first
    source); with `held`, every source it depends on (all that a mean start averages)."""
    per_version = held_shas if held else merged_shas
    return set().union(*(per_version(tags) for tags in chain)) if chain else set()


def plan_merge(tracker, model_name: str, area: list[AreaSource], out_dir: Path,  # type: ignore[no-untyped-def]
               full: bool = False, params_sha256: str = "") -> MergePlan:
    """Which sources to merge, into what: everything from scratch, the champion plus what is new, or the
    last version of an interrupted run plus what it had not merged yet (resume).

    A run that died (SIGKILL, power loss) or failed leaves its registered versions without an alias and its
    parent run not FINISHED. With the same params (`params_sha256`) and its sources all still present, the
    next run continues from its newest version instead of registering the same stages again, so the
    registry ends with one version per stage.
    """
    ended = tuple(tracker.end_dead_runs())
    champion = None if full else tracker.get_alias_version(model_name, "champion")
    head = interrupted_head(tracker, model_name, area, champion, full, params_sha256)
    if head is not None:
        plan = _continue_from(tracker, model_name, area, out_dir, head, resumed=True)
    elif champion is None:
        plan = MergePlan(None, "", 0, area, 0)
    else:
        plan = _continue_from(tracker, model_name, area, out_dir, champion, resumed=False)
    return replace(plan, ended_runs=ended)


def _continue_from(tracker, model_name: str, area: list[AreaSource], out_dir: Path, version: str,  # type: ignore[no-untyped-def]
                   resumed: bool) -> MergePlan:
    from flows.stores.registry import download_weights

    chain = lineage_sources(tracker, model_name, version)
    merged = chain_shas(chain)
    new = [s for s in area if s.checkpoint.sha256 not in merged]
    if not new:
        return MergePlan(None, version, 0, [], len(merged), resumed)
    path = download_weights(f"models:/{model_name}/{version}", out_dir / f"parent-v{version}.safetensors",
                            tracker.tracking_uri)
    parent = StepArtifact(SavedCheckpoint(path, file_sha256(path), read_header(path)), None,
                          chain[0].get("chain_sha256", ""))
    return MergePlan(parent, version, int(chain[0]["stage"]) + 1, new, len(merged), resumed)


def interrupted_head(tracker, model_name: str, area: list[AreaSource], champion: str | None,  # type: ignore[no-untyped-def]
                     full: bool, params_sha256: str) -> str | None:
    """The newest version registered by a run that did not finish, if a run of these params can continue it.

    It must carry the same params hash, its lineage's sources must all still be in the area, and it must
    extend the champion (incremental) or start from scratch (`full`).
    """
    versions = tracker.versions(model_name)
    if not versions:
        return None
    states = tracker.run_states()
    area_shas = {s.checkpoint.sha256 for s in area}
    for record in reversed(versions):  # newest first
        _, parent_run = states.get(record["run_id"], ("", ""))
        if states.get(parent_run, ("", ""))[0] not in ("KILLED", "FAILED") or record["aliases"]:
            continue  # finished, or still RUNNING in a live process
        tags = record["tags"]
        if params_sha256 and tags.get("params_sha256") != params_sha256:
            continue
        chain = lineage_sources(tracker, model_name, record["version"])
        if not chain_shas(chain, held=True) <= area_shas:  # a mean start needs every source it averages
            continue
        chain_versions = {t["version"] for t in chain}
        if full and tags.get("incremental_from", ""):
            continue
        if not full and champion is not None and champion not in chain_versions:
            continue
        if champion is not None and not full and int(record["version"]) <= int(champion):
            continue
        return record["version"]
    return None
