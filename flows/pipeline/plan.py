"""Incremental runs: start from the champion and merge only the sources its lineage lacks.

GRASP is sequential, so a new source is one more stage on top of the current champion: the old
sources are never reloaded, and memory stays that of two models however long the lineage is.

`decide` is the one decision, made from the registry: the version to continue from (the champion, or the
last version of an interrupted run) and its lineage. `plan_merge` (the flow) and `nothing_to_merge` (the
CLI's check before Prefect starts, flows/pipeline/up_to_date.py) both read it, so they cannot disagree.
Torch-free at import: the CLI's check must stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from flows.pipeline.start import held_shas, merged_shas

if TYPE_CHECKING:
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.stage import StepArtifact
    from flows.stores.tracking import Tracker


@dataclass(frozen=True)
class MergePlan:
    parent: StepArtifact | None  # the champion's checkpoint to merge into; None = start from scratch
    parent_version: str  # "" when starting from scratch
    start_stage: int
    to_merge: list[AreaSource]
    merged_before: int  # sources already in the champion's lineage
    resumed: bool = False  # `parent` is the last version an interrupted run registered, not the champion
    ended_runs: tuple[str, ...] = ()  # MLflow runs of dead processes, marked KILLED by this plan


@dataclass(frozen=True)
class Decision:
    """Where a run continues: `version` ("" = from scratch), whether it resumes an interrupted run, and that
    version's lineage (newest first; [] from scratch)."""

    version: str
    resumed: bool
    chain: list[dict[str, str]]

    def unmerged(self, area_shas: Iterable[str]) -> set[str]:
        """The source checkpoints (sha256) of the area that this lineage has not merged yet."""
        return set(area_shas) - chain_shas(self.chain)


def lineage_sources(tracker: Tracker, model_name: str, version: str) -> list[dict[str, str]]:
    """Tags of `version` and each parent up to stage 0 (newest first); a mean start's source list read back
    from its run when it outgrew a tag (flows/stores/start_sources.py)."""
    from flows.stores.start_sources import has_members_artifact, resolve_start_sources

    by_version = {v["version"]: v for v in tracker.versions(model_name)}
    chain, current = [], version
    while current:
        record = by_version[current]
        tags = record["tags"]
        if has_members_artifact(tags):  # the client only then: nothing else here reads the run
            tags = resolve_start_sources(tracker.client, record["run_id"], tags)
        chain.append({**tags, "version": current})
        current = tags.get("parent_version", "")
    return chain


def chain_shas(chain: list[dict[str, str]], held: bool = False) -> set[str]:
    """The source checkpoints (sha256) a lineage merged as stages (a mean start stands for the order's first
    source); with `held`, every source it depends on (all that a mean start averages)."""
    per_version = held_shas if held else merged_shas
    return set().union(*(per_version(tags) for tags in chain)) if chain else set()


def decide(tracker: Tracker, model_name: str, area_shas: set[str], full: bool,
           params_sha256: str) -> Decision:
    """The version a run continues from: the last version of an interrupted run it can resume, else the champion
    (none with `full`), else none (from scratch). Reads the registry only; `plan_merge` ends dead runs first."""
    champion = None if full else tracker.get_alias_version(model_name, "champion")
    head = interrupted_head(tracker, model_name, area_shas, champion, full, params_sha256)
    version = head or champion or ""
    return Decision(version, head is not None, lineage_sources(tracker, model_name, version) if version else [])


def plan_merge(tracker: Tracker, model_name: str, area: list[AreaSource], out_dir: Path,
               full: bool = False, params_sha256: str = "") -> MergePlan:
    """Which sources to merge, into what: everything from scratch, the champion plus what is new, or the
    last version of an interrupted run plus what it had not merged yet (resume).

    A run that died (SIGKILL, power loss) or failed leaves its registered versions without an alias and its
    parent run not FINISHED. With the same params (`params_sha256`) and its sources all still present, the
    next run continues from its newest version instead of registering the same stages again, so the
    registry ends with one version per stage.
    """
    ended = tuple(tracker.end_dead_runs())
    decision = decide(tracker, model_name, {s.checkpoint.sha256 for s in area}, full, params_sha256)
    if not decision.version:
        plan = MergePlan(None, "", 0, area, 0)
    else:
        plan = _continue_from(tracker, model_name, area, out_dir, decision)
    return replace(plan, ended_runs=ended)


def nothing_to_merge(tracker: Tracker, model_name: str, area_shas: set[str],
                     params_sha256: str) -> tuple[str, int] | None:
    """(champion version, sources it holds) when `plan_merge` (without `full`) would end no dead run, resume
    nothing and merge nothing; else None. Read-only: the registry is left as it is."""
    if tracker.dead_runs():
        return None
    decision = decide(tracker, model_name, area_shas, False, params_sha256)
    if not decision.version or decision.resumed or decision.unmerged(area_shas):
        return None
    return decision.version, len(chain_shas(decision.chain))


def _continue_from(tracker: Tracker, model_name: str, area: list[AreaSource], out_dir: Path,
                   decision: Decision) -> MergePlan:
    from flows.pipeline.stage import StepArtifact
    from flows.stores.registry import download_weights
    from grasp_core.checkpoints import SavedCheckpoint, file_sha256, read_header

    version, chain = decision.version, decision.chain
    merged = chain_shas(chain)
    unmerged = decision.unmerged(s.checkpoint.sha256 for s in area)
    new = [s for s in area if s.checkpoint.sha256 in unmerged]
    if not new:
        return MergePlan(None, version, 0, [], len(merged), decision.resumed)
    path = download_weights(f"models:/{model_name}/{version}", out_dir / f"parent-v{version}.safetensors",
                            tracker.tracking_uri)
    parent = StepArtifact(SavedCheckpoint(path, file_sha256(path), read_header(path)), None,
                          chain[0].get("chain_sha256", ""))
    return MergePlan(parent, version, int(chain[0]["stage"]) + 1, new, len(merged), decision.resumed)


def interrupted_head(tracker: Tracker, model_name: str, area_shas: set[str], champion: str | None,
                     full: bool, params_sha256: str) -> str | None:
    """The newest version registered by a run that did not finish, if a run of these params can continue it.

    It must carry the same params hash, its lineage's sources must all still be in the area (`area_shas`), and
    it must extend the champion (incremental) or start from scratch (`full`).
    """
    versions = tracker.versions(model_name)
    if not versions:
        return None
    states = tracker.run_states()
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
