"""Incremental runs: start from the champion and merge only the sources its lineage lacks.

GRASP is sequential, so a new source is one more stage on top of the current champion: the old
sources are never reloaded, and memory stays that of two models however long the lineage is.

`decide` is the one decision, made from the registry: the version to continue from (the champion, the
challenger of a finished run that awaits promotion, or the last version of an interrupted run) and its
lineage. `plan_merge` (the flow) and `nothing_to_merge` (the
CLI's check before Prefect starts, flows/pipeline/up_to_date.py) both read it, so they cannot disagree.
Torch-free at import: the CLI's check must stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from flows.pipeline.start import held_shas, merged_shas, start_held_shas

if TYPE_CHECKING:
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.stage import StepArtifact
    from flows.stores.tracking import Tracker


@dataclass(frozen=True)
class MergePlan:
    parent: StepArtifact | None  # the checkpoint to merge into (`parent_version`'s); None = start from scratch
    parent_version: str  # "" when starting from scratch
    start_stage: int
    to_merge: list[AreaSource]
    merged_before: int  # sources already in the parent's lineage
    resumed: bool = False  # `parent` is the last version an interrupted run registered, not the champion
    ended_runs: tuple[str, ...] = ()  # MLflow runs of dead processes, marked KILLED by this plan
    champion: str = ""  # the champion alias; `parent_version` is a newer challenger when they differ
    # source checkpoints (sha256) the lineage's mean start averages: their stages apply `transfer.after_mean`
    held_by_start: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    """Where a run continues: `version` ("" = from scratch), whether it resumes an interrupted run, and that
    version's lineage (newest first; [] from scratch)."""

    version: str
    resumed: bool
    chain: list[dict[str, str]]
    champion: str = ""  # the champion alias ("" none, or `full`); `version` differs when a newer run builds on

    @property
    def awaits_promotion(self) -> bool:
        """The run continues from a challenger newer than the champion (not a resume, not the champion)."""
        return bool(self.version) and not self.resumed and self.version != self.champion

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
    """The version a run continues from: the last version of an interrupted run it can resume, else the challenger
    that awaits promotion (`pending_challenger`), else the champion (none with `full`), else none (from scratch).
    Reads the registry only; `plan_merge` ends dead runs first."""
    champion = None if full else tracker.get_alias_version(model_name, "champion")
    latest = champion
    if champion is not None:
        latest = pending_challenger(tracker, model_name, champion, area_shas, params_sha256) or champion
    head = interrupted_head(tracker, model_name, area_shas, latest, full, params_sha256)
    version = head or latest or ""
    return Decision(version, head is not None, lineage_sources(tracker, model_name, version) if version else [],
                    champion or "")


def pending_challenger(tracker: Tracker, model_name: str, champion: str, area_shas: set[str],
                       params_sha256: str) -> str | None:
    """The challenger when the next run must build on it rather than on the champion, else None.

    A run's final version becomes `challenger`; the champion moves only on promotion. Continuing from the
    champion would merge the challenger's sources again on every run, one duplicate version each time. So the
    challenger counts when it is newer than the champion, has the same params hash, every source it holds is
    still in the area, and its run reached its end: the alias is set last, after every stage was registered
    (a run killed after that point lost nothing; one still RUNNING is another live process's, and left alone).
    A challenger the gate refused counts too: the next stage has its own validation guard, and the gate judges
    the next challenger against the champion again (docs/operations.md, "incremental runs").
    """
    challenger = tracker.get_alias_version(model_name, "challenger")
    if challenger is None or int(challenger) <= int(champion):
        return None
    record = next((v for v in tracker.versions(model_name) if v["version"] == challenger), None)
    if record is None or (params_sha256 and record["tags"].get("params_sha256") != params_sha256):
        return None
    states = tracker.run_states()
    if states.get(states.get(record["run_id"], ("", ""))[1], ("", ""))[0] == "RUNNING":
        return None
    if not chain_shas(lineage_sources(tracker, model_name, challenger), held=True) <= area_shas:
        return None
    return challenger


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
                     params_sha256: str) -> tuple[str, str, int] | None:
    """(champion, the version that holds every source, how many) when `plan_merge` (without `full`) would end no
    dead run, resume nothing and merge nothing; else None. The second is the champion itself, or the challenger
    that awaits promotion. Read-only: the registry is left as it is."""
    if tracker.dead_runs():
        return None
    decision = decide(tracker, model_name, area_shas, False, params_sha256)
    if not decision.version or decision.resumed or decision.unmerged(area_shas):
        return None
    return decision.champion, decision.version, len(chain_shas(decision.chain))


def holds_all_line(champion: str, version: str, held: int, model_name: str = "") -> str:
    """What `grasp run` says when nothing is new: the champion holds every source, or a newer challenger does
    and waits for `grasp promote` (the run would otherwise look stuck on an old champion)."""
    of = f" of {model_name}" if model_name else ""
    if version == champion:
        return f"nothing new: champion v{champion}{of} already holds all {held} sources"
    return (f"nothing new: champion v{champion}{of}; challenger v{version} already holds all {held} sources and "
            "awaits promotion: grasp promote")


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
        return MergePlan(None, version, 0, [], len(merged), decision.resumed, champion=decision.champion)
    path = download_weights(f"models:/{model_name}/{version}", out_dir / f"parent-v{version}.safetensors",
                            tracker.tracking_uri)
    parent = StepArtifact(SavedCheckpoint(path, file_sha256(path), read_header(path)), None,
                          chain[0].get("chain_sha256", ""))
    return MergePlan(parent, version, int(chain[0]["stage"]) + 1, new, len(merged), decision.resumed,
                     champion=decision.champion, held_by_start=start_held_shas(chain))


def interrupted_head(tracker: Tracker, model_name: str, area_shas: set[str], champion: str | None,
                     full: bool, params_sha256: str) -> str | None:
    """The newest version registered by a run that did not finish, if a run of these params can continue it.

    It must carry the same params hash, its lineage's sources must all still be in the area (`area_shas`), and
    it must extend `champion` (incremental: the champion, or the pending challenger `decide` passes instead) or
    start from scratch (`full`).
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
