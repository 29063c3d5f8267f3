"""The sequential heart of a run: the merge order of its sources, one stage per source with its registration
submitted beside the next stage, and the version the aliases point at."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.futures import PrefectFuture, wait

from flows.pipeline import tasks
from flows.pipeline.source_ledger import lineage_tags
from flows.pipeline.start import start_artifacts
from flows.pipeline.summary import FlowSummary, Prepared
from flows.pipeline.workspace import Workspace
from flows.reports.progress import Progress
from flows.runtime.execution import AUTO, Compute
from grasp_core.memory import settle
from grasp_core.start import MEAN_NAME, transfer_applied

if TYPE_CHECKING:
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.stage import StepArtifact
    from flows.stores.tracking import Tracker
    from grasp_core.config import Config


def merge_all(prep: Prepared, computed: list[StepArtifact] | None = None) -> None:
    """The sequential part: one stage per source. Each stage's registration is submitted as a future and
    runs while the next stage trains; registrations chain (each waits for its parent's version)."""
    registrations: list[PrefectFuture[str]] = []
    settle()  # imports are done and no model is alive: make live-tensor scans cheap
    try:
        _stages(prep, registrations, computed)
    except BaseException:
        wait(registrations)  # the stages before the failure stay registered, as in a sequential run
        raise
    wait(registrations)
    raise_failed_dvc(prep.data_v, prep.src_v)  # else a registration that never ran reports only "PENDING"
    prep.summary.versions.extend(f.result() for f in registrations)  # raises the first failed registration


def raise_failed_dvc(*outputs: PrefectFuture[Any] | None) -> None:
    """Raise the error of a failed DVC future. The tasks that take a DVC output never run when it failed:
    Prefect leaves them Pending ("NotReady"), and their `.result()` would raise UnfinishedRun instead."""
    for output in outputs:
        if output is not None:
            output.result()


def _stages(prep: Prepared, registrations: list[PrefectFuture[str]], computed: list[StepArtifact] | None) -> None:
    """Compute each stage here (or take it from `computed`, a fan-out's chain) and submit its registration."""
    cfg, ws, summary, classes, plan, progress = prep.cfg, prep.ws, prep.summary, prep.classes, prep.plan, prep.progress
    parent, parent_version = plan.parent, plan.parent_version
    for i, (stage, source) in enumerate(enumerate(plan.to_merge, start=plan.start_stage)):
        ckpt, name = source.checkpoint, source.domain
        held = ckpt.sha256 in plan.held_by_start  # averaged into this lineage's mean start (transfer.after_mean)
        if computed is not None:
            step = computed[i]
            progress.step(step.computed)
        else:
            if registrations:  # registering loads the model once more (MLflow checks the input example):
                registrations[-1].wait()  # beside a stage that would be a third model alive in this process
            step = tasks.grasp_stage_task(cfg, ws, summary.target, classes, ckpt, name, stage, parent, progress,
                                          prep.compute, held)
        tags = {**prep.run_tags, "stage": str(stage), "source_domain": name, "source_sha256": ckpt.sha256,
                **_provenance(prep, i, source), "checkpoint_sha256": step.checkpoint.sha256,
                "chain_sha256": step.chain_sha256, "transfer_applied": _applied(cfg, parent is None, held)}
        extra = start_artifacts(prep.start_tags, ckpt.path) if i == 0 and name == MEAN_NAME else {}
        # parent_version and the DVC outputs are futures, which Prefect resolves before the task runs
        registration = tasks.register_task.submit(  # type: ignore[call-overload]  # (its stubs cannot say so)
            prep.tracker, summary.parent_run_id, summary.model_name, step, classes, tags,
            ws.root / "reports" / summary.parent_run_id, parent_version, prep.data_v, prep.src_v, extra)
        registrations.append(registration)
        parent_version = registration
        summary.steps.append(step)
        parent = step


def _applied(cfg: Config, first: bool, held: bool) -> str:
    """The `transfer_applied` tag of a stage: stage 0 adopts its source; later ones say what they transferred."""
    return "none (stage 0 adopts its source)" if first else transfer_applied(cfg, held)


def _provenance(prep: Prepared, i: int, source: AreaSource) -> dict[str, str]:
    """Where the `i`-th source of this run comes from: a source file (its verified facts and, apart, its
    header's claims), or for the chosen start its choice and, for a mean, every source it averages."""
    start = prep.start_tags if i == 0 else {}
    if source.domain == MEAN_NAME and start.get("start_chosen") == MEAN_NAME:
        return {**start, "source_origin": "start-mean"}  # the mean is grasp's own file, made in this run
    ckpt = source.checkpoint
    return {**start, **lineage_tags(prep.ws, source.domain, ckpt.sha256, ckpt.header)}


def in_merge_order(cfg: Config, ws: Workspace, target: str, classes: list[str], to_merge: list[AreaSource],
                   progress: Progress, from_scratch: bool = False,
                   compute: Compute = AUTO) -> tuple[list[AreaSource], dict[str, str]]:
    """The sources of this run in `transfer.order` (given = the data's time order, nearest in time first, most
    aligned first, or best scored first); time is the data's domain list (`_domains.txt`).

    A run `from_scratch` then applies `transfer.start` (flows/pipeline/start.py): the list may begin with the
    mean of the sources instead of the order's first one. Returns the list and stage 0's start tags. Resumed
    and incremental runs merge into a registered version and never choose a start again.
    """
    from grasp_core.data import list_domains
    from grasp_core.order import in_time_order, order_sources

    timeline = list_domains(ws.data(cfg))
    by_name = {s.domain: s for s in to_merge}
    names = in_time_order(list(by_name), timeline)
    pick_start = from_scratch and cfg.transfer.start != "first" and bool(names)
    ctx = None
    if pick_start or (cfg.transfer.order in ("aligned", "scored") and len(names) > 1):
        from flows.pipeline.core_run import method_context  # the target's loaders, opened once for both

        ctx = method_context(cfg, ws, target, names, classes, progress, compute)
    if cfg.transfer.order == "given" or len(names) < 2:
        ordered = names
    elif cfg.transfer.order in ("aligned", "scored"):  # a streaming pre-pass over the sources: two models at most
        from grasp_core.methods.grasp_method import merge_order

        assert ctx is not None
        with compute.autocast():  # as the core engine runs it (mixed precision when --amp asks)
            ordered = merge_order(ctx)
    else:
        ordered = order_sources(names, target, cfg.transfer.order, timeline=timeline)
    if cfg.transfer.order != "given" and len(names) > 1:
        progress.say(f"merge order ({cfg.transfer.order}): {', '.join(ordered)}")
    sources = [by_name[name] for name in ordered]
    if not pick_start:
        return sources, {}
    from flows.pipeline.start import choose_start

    assert ctx is not None
    with compute.autocast():
        sources, tags = choose_start(cfg, ws, target, sources, ctx)
    progress.say(f"start ({cfg.transfer.start}): {tags['start_chosen']} (val: first {tags['start_val_first']}, "
                 f"mean {tags['start_val_mean']})")
    return sources, tags


def final_version(cfg: Config, summary: FlowSummary) -> str:
    """The version the run's aliases point at: the last stage, or with `transfer.keep_global_best` the
    stage of this run with the best validation accuracy (the earliest on a tie)."""
    if not cfg.transfer.keep_global_best:
        return summary.versions[-1]
    vals = [s.computed.val_accuracy for s in summary.steps]
    return summary.versions[vals.index(max(vals))]


def skipped_tag(skipped: list[dict]) -> str:
    """The refused files of this run as a JSON tag (reasons cut so the tag stays within MLflow's limit)."""
    import json

    return json.dumps([{"file": s["file"], "reason": s["reason"][-300:]} for s in skipped][:20]) if skipped else ""


def lineage_start(tracker: Tracker, summary: FlowSummary) -> str:
    """A resumed run keeps the `incremental_from` of the run it continues (its lineage's starting champion)."""
    by_version = {v["version"]: v["tags"] for v in tracker.versions(summary.model_name)}
    return by_version.get(summary.parent_version, {}).get("incremental_from", "")
