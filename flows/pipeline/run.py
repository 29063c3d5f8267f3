"""`grasp run`: the Prefect flow. The DAG and nothing else; every box is a task in flows/pipeline/tasks.py.

materialise data -> DVC-track data -> validate (GX) -> base -> train sources (fan-out) ->
DVC-track sources -> per source: align/transfer/fine-tune/evaluate -> MLflow run + version ->
lineage plot, beside the data's DVC push -> aliases -> run report
"""

from __future__ import annotations

from dataclasses import replace as replace_plan
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import tasks
from flows.pipeline.fanout import merge_targets, train_sources
from flows.pipeline.merge import final_version, in_merge_order, lineage_start, merge_all, raise_failed_dvc, skipped_tag
from flows.pipeline.plan import holds_all_line
from flows.pipeline.stage import StepArtifact
from flows.pipeline.summary import FlowSummary, Prepared
from flows.pipeline.up_to_date import (
    VALIDATION_DIR,
    RunInputs,
    code_identity,
    fingerprint_of,
    forget,
    registry_snapshot,
    remember,
)
from flows.pipeline.workspace import Workspace
from flows.reports.progress import Progress, link_mlflow_run
from flows.runtime.options import RunOptions
from flows.runtime.settings import code_commit, route_run_logs
from flows.stores.validation import prewarmed_gx
from grasp_core.config import Config, config_hash, flatten, load_config
from grasp_core.config import replace as replace_config
from grasp_core.errors import ConfigError
from grasp_core.grasp import check_plugins
from grasp_core.memory import settle
from grasp_core.names import check_name
from grasp_core.start import MEAN_NAME

if TYPE_CHECKING:
    from flows.pipeline.sources import AreaSource
    from flows.stores.tracking import Tracker


@flow(name="grasp-run", task_runner=ThreadPoolTaskRunner(max_workers=6), log_prints=False)
def grasp_run_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                   dvc_remote: str | None = None, baselines: bool = False, full: bool = False,
                   auto_promote: bool = False, quiet: bool = False, verbose: bool = False,
                   runner: str = "local", lock_wait_s: float = 0.0, device: str = "auto",
                   amp: bool = False) -> FlowSummary:
    """Validate, version, train the missing sources, merge them one at a time and register each step.

    `runner` places the source-training fan-out: "local" threads, "dask" (a local cluster) or
    "dask=tcp://HOST:PORT" (see flows/runtime/runners.py). `device` and `amp` say where and how the core
    computes (flows.runtime.execution.Compute); plain values, so a served deployment can carry them.

    One run per workspace at a time: a second one is refused (overlapping scheduled runs never merge
    the same source twice), or waits up to `lock_wait_s` (scheduled runs; the wait is logged).
    `auto_promote` runs the promotion gate on the new challenger.
    """
    from flows.runtime.lock import RunLock

    route_run_logs(verbose)  # here, so served (scheduled) runs in their own processes log their stages too

    opts = RunOptions(Path(workdir), Path(params_path), tracking_uri, dvc_remote, runner, device, amp,
                      quiet=quiet, verbose=verbose, full=full)
    with RunLock(Path(workdir), wait_s=lock_wait_s, command="grasp run"):
        forget(Path(workdir))  # until this run ends well, `grasp run` knows nothing to be current
        prep = _prepare(opts)
        summary = _finish(prep, baselines)
        if auto_promote and summary.versions:
            summary.promotion = tasks.promote_task(Path(workdir), tracking_uri, load_config(Path(params_path)))
        # last (a promotion moves the champion): a later `grasp run` with nothing new can end before Prefect starts
        remember(prep.ws.root, replace_plan(prep.inputs, decision=registry_snapshot(prep.tracker, prep.inputs)))
    return summary


@flow(name="grasp-all-targets", task_runner=ThreadPoolTaskRunner(max_workers=6), log_prints=False)
def grasp_all_targets_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                           dvc_remote: str | None = None, baselines: bool = False, full: bool = False,
                           quiet: bool = False, verbose: bool = False, runner: str = "local",
                           device: str = "auto", amp: bool = False) -> list[FlowSummary]:
    """Leave-one-domain-out: every domain as the target in turn, each its own registered model `grasp-<domain>`.

    One lock for the whole sweep. Every domain's source model is trained first, in one fan-out on `runner`
    (a domain's source is the same for every target: its seed is fixed by its place in time,
    flows.pipeline.workspace.source_seed); then each target's merge runs in turn and re-uses them.
    """
    from flows.runtime.lock import RunLock

    route_run_logs(verbose)  # here, so served (scheduled) runs in their own processes log their stages too

    opts = RunOptions(Path(workdir), Path(params_path), tracking_uri, dvc_remote, runner, device, amp,
                      quiet=quiet, verbose=verbose, full=full)
    with RunLock(Path(workdir), command="grasp run --all-targets"):
        forget(Path(workdir))  # it may train sources: the single-target record no longer holds
        ws, cfg, compute = Workspace(Path(workdir)), load_config(Path(params_path)), opts.compute
        check_plugins(cfg)  # a misspelt policy or criterion fails before any data or model is written
        progress = Progress(quiet, verbose, run_log=True)
        with prewarmed_gx(ws.root / VALIDATION_DIR) as gx:
            target, sources, classes = tasks.materialise_task(cfg, ws, progress)
            tasks.validate_task(ws.data(cfg), ws.root / VALIDATION_DIR, gx, cfg)  # the gate before any training
        domains = [*sources, target]
        base = tasks.base_task(cfg, ws, classes, sources[0], progress, compute)
        trained = sum(fresh for _, fresh in train_sources(cfg, ws, domains, domains, classes, base, runner, compute))
        progress.say(f"{len(domains)} source models ready ({trained} trained), one per domain, for every target")
        preps = [_prepare(opts, target_override=domain) for domain in domains]
        chains = merge_targets(preps, runner)  # independent targets fan out; registration stays here
        return [_finish(prep, baselines, chains.get(prep.summary.target)) for prep in preps]


CORE_ONLY = {"finetune.schedule": "staged"}  # explored options the flow lacks


def check_flow_options(cfg: Config, params_path: str) -> None:
    """Refuse, before anything runs, an option only the core engine and the benches apply (issue 17's
    exploration): the flow would silently run without it."""
    flat = flatten(cfg)
    for key, flow_value in CORE_ONLY.items():
        if flat[key] != flow_value:
            raise ConfigError(f"{params_path}: '{key}' = '{flat[key]}' runs with `grasp run --engine core` and the "
                              f"benches only; use --engine core, or set it to '{flow_value}' for the Prefect flow")


def _prepare(opts: RunOptions, target_override: str = "") -> Prepared:
    """Data, GX gate, DVC, sources and the merge plan of one target; everything before the first stage."""
    from prefect.runtime import flow_run

    ws, progress, compute = Workspace(opts.workdir), Progress(opts.quiet, opts.verbose, run_log=True), opts.compute
    cfg = load_config(opts.params)
    check_plugins(cfg)  # a misspelt policy or criterion fails before any data or model is written
    check_flow_options(cfg, str(opts.params))
    if target_override:
        cfg = replace_config(cfg, data__target=target_override)
    # Tool work runs beside the critical path (GX gate -> training -> merge) and is awaited where needed:
    # GX imports in its own process while the data is written, then validates there; meanwhile DVC
    # versions the data (a subprocess) and MLflow opens in this process, which would otherwise sit idle.
    with prewarmed_gx(ws.root / VALIDATION_DIR) as gx:
        target, sources, classes = tasks.materialise_task(cfg, ws, progress)
        data_fp = fingerprint_of(ws.data(cfg))  # each input's fingerprint before anything reads it (up_to_date.py)
        data_v = tasks.dvc_version_data_task.submit(ws, opts.dvc_remote, cfg.data.root)
        tracker_future = tasks.open_tracking_task.submit(ws, opts.tracking_uri)
        try:
            tasks.validate_task(ws.data(cfg), ws.root / VALIDATION_DIR, gx, cfg)
        except BaseException:
            wait([data_v])  # leave no DVC subprocess or half-opened store behind a failed gate
            wait([tracker_future])
            raise
    progress.say(f"data valid; target {target}; sources {', '.join(sources)}")
    base = tasks.base_task(cfg, ws, classes, sources[0], progress, compute)
    base_fp = fingerprint_of(ws.base)
    trained = sum(fresh for _, fresh in train_sources(cfg, ws, sources, [*sources, target], classes, base,
                                                      opts.runner, compute))
    sources_fp = fingerprint_of(ws.sources)
    area, bad = tasks.area_task(ws, target, cfg.on_bad_source, progress, cfg.limits)
    src_v = tasks.dvc_track_task.submit(ws, "checkpoints/sources", wait_for=[data_v], return_state=False)
    # the data's push (thousands of files) runs beside the merge and registrations; the aliases wait for it.
    # data_v is a future, which Prefect resolves before the task runs (its stubs cannot say so)
    data_push = tasks.dvc_push_task.submit(ws, data_v, wait_for=[src_v], return_state=False)  # type: ignore[arg-type]
    progress.say(f"sources ready ({trained} trained, {len(area) - trained} re-used or added)")
    tracker = tracker_future.result()
    summary = FlowSummary(target, [], check_name(f"grasp-{target}", "model name"), sources_trained=trained)
    plan = tasks.plan_task(tracker, summary.model_name, area, ws.targets(target), opts.full, config_hash(cfg))
    inputs = RunInputs(config_hash(cfg), code_identity(), tracker.tracking_uri, data_fp, base_fp, sources_fp,
                       summary.model_name, tuple(sorted(s.checkpoint.sha256 for s in area)))
    ordered, start_tags = in_merge_order(cfg, ws, target, classes, plan.to_merge, progress,
                                         from_scratch=plan.parent is None and not plan.parent_version, compute=compute)
    if start_tags.get("start_chosen") == MEAN_NAME:  # it averages every source of this run's list
        plan = replace_plan(plan, held_by_start=frozenset(s.checkpoint.sha256 for s in plan.to_merge))
    plan = replace_plan(plan, to_merge=ordered)
    prep = Prepared(cfg, ws, progress, classes, summary, tracker, plan, inputs, data_v=data_v, src_v=src_v,
                    data_push=data_push, params_path=str(opts.params), compute=compute, start_tags=start_tags)
    summary.sources, summary.parent_version = [s.domain for s in plan.to_merge], plan.parent_version
    summary.merged_before, summary.all_sources = plan.merged_before, [s.domain for s in area]
    summary.resumed, summary.champion = plan.resumed, plan.champion
    summary.skipped = [{"file": b.path.name, "reason": b.reason} for b in bad]
    if plan.ended_runs:
        progress.say(f"marked {len(plan.ended_runs)} MLflow run(s) of a dead process KILLED")
    if plan.resumed:
        progress.say(f"resuming an interrupted run from v{plan.parent_version} ({plan.merged_before} source(s) "
                     f"merged); {len(plan.to_merge)} to go")
    if not plan.to_merge:
        summary.data_md5 = data_v.result().md5
        raise_failed_dvc(src_v, data_push)  # raises if the sources' or the data's versioning failed
        prep.done = True
        if plan.resumed:  # it registered every stage but died before the aliases
            summary.aliases = tasks.alias_task(tracker, summary.model_name, plan.parent_version)
        else:
            progress.say(f"{holds_all_line(plan.champion, plan.parent_version, plan.merged_before)}; "
                         "nothing registered")
        return prep
    prep.run_tags = {"params_sha256": config_hash(cfg), "code_commit": code_commit(),
                     "flow_run_id": str(flow_run.id), "policy": cfg.transfer.policy, "target_domain": target,
                     "method": "grasp", "incremental_from": plan.parent_version if not plan.resumed else
                     lineage_start(tracker, summary), "resumed_from": plan.parent_version if plan.resumed else "",
                     "skipped_sources": skipped_tag(summary.skipped)}
    return prep


def _finish(prep: Prepared, baselines: bool, computed: list[StepArtifact] | None = None) -> FlowSummary:
    """Merge (or take the `computed` stages of a fan-out) and register them, set aliases, report."""
    summary = prep.summary
    if prep.done:
        return summary
    try:
        report = _finish_merge(prep, computed)
    except BaseException:
        wait([prep.data_push])  # no DVC subprocess left behind a failed run
        raise
    summary.report = report.result()
    if baselines:
        _run_baselines(prep)
    summary.report_html = tasks.run_report_task(summary, prep.ws, prep.tracker.tracking_uri,
                                                prep.cfg.transfer.threshold)
    return summary


def _finish_merge(prep: Prepared, computed: list[StepArtifact] | None) -> PrefectFuture[str]:
    """Merge and register under the parent run; aliases move once the data is on the DVC remote.

    Returns the future of the lineage plot (report_task): it needs only the registered versions, so it
    draws while the data's push finishes and the aliases move.
    """
    summary, cfg, ws, tracker, run_tags = prep.summary, prep.cfg, prep.ws, prep.tracker, prep.run_tags
    with tracker.parent_run(f"grasp-{summary.target}", flatten(cfg), run_tags,
                            params_file=Path(prep.params_path)) as parent_id:
        summary.parent_run_id = parent_id
        link_mlflow_run(tracker.tracking_uri, tracker.experiment_id, parent_id)
        merge_all(prep, computed)
        report = tasks.report_task.submit(ws, tracker.tracking_uri, summary.model_name, summary.versions[-1])
        try:
            _move_aliases(prep)
        except BaseException:
            wait([report])  # no plot still drawing behind a failed run
            raise
    return report


def _move_aliases(prep: Prepared) -> None:
    """Once the data is on the DVC remote: the final tags and metrics of the parent run, and the aliases."""
    summary, cfg, tracker, run_tags = prep.summary, prep.cfg, prep.tracker, prep.run_tags
    raise_failed_dvc(prep.data_v, prep.src_v, prep.data_push)
    summary.data_md5 = prep.data_v.result().md5
    run_tags.update(dataset_dvc_md5=summary.data_md5, sources_dvc_md5=prep.src_v.result().md5)
    summary.aliases_version = final_version(cfg, summary)
    summary.aliases = tasks.alias_task(tracker, summary.model_name, summary.aliases_version)
    _log_final(tracker, summary, run_tags, prep.plan.to_merge)


def run_pipeline(opts: RunOptions, baselines: bool = False, auto_promote: bool = False) -> FlowSummary:
    """Run the flow where and how `opts` say, on the API at $PREFECT_API_URL (`grasp run` sets it to its own
    `prefect server start`, flows/ops/prefect_server.py), else on Prefect's ephemeral API (called as a library)."""
    return grasp_run_flow(params_path=str(opts.params), workdir=str(opts.workdir), tracking_uri=opts.tracking_uri,
                          dvc_remote=opts.dvc_remote, baselines=baselines, full=opts.full,
                          auto_promote=auto_promote, quiet=opts.quiet, verbose=opts.verbose, runner=opts.runner,
                          device=opts.compute.device, amp=opts.amp)


def run_all_targets(opts: RunOptions, baselines: bool = False) -> list[FlowSummary]:
    """`grasp run --all-targets`: the leave-one-domain-out sweep (see grasp_all_targets_flow)."""
    return grasp_all_targets_flow(params_path=str(opts.params), workdir=str(opts.workdir),
                                  tracking_uri=opts.tracking_uri, dvc_remote=opts.dvc_remote, baselines=baselines,
                                  full=opts.full, quiet=opts.quiet, verbose=opts.verbose, runner=opts.runner,
                                  device=opts.compute.device, amp=opts.amp)


def all_targets_rows(summaries: list[FlowSummary]) -> list[dict[str, Any]]:
    """One row per (target, method): GRASP's final version and, with --baselines, every baseline."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        if s.methods:
            rows.extend({"target": s.target, **{k: v for k, v in m.items() if k != "target"}} for m in s.methods)
        elif s.steps:
            rows.append({"target": s.target, **{k: v for k, v in _grasp_row(s).items() if k != "target"}})
        else:  # nothing new for this target: its champion already holds every source
            rows.append({"target": s.target, "method": "grasp", "version": s.parent_version, "note": "nothing new"})
    return rows


def _log_final(tracker: Tracker, summary: FlowSummary, tags: dict[str, str],
               to_merge: list[AreaSource]) -> None:
    """GRASP's method-level figures on the parent run, with the same keys as the baseline runs."""
    results = [s.computed for s in summary.steps]
    last, peak = results[-1], max((r.memory for r in results), key=lambda m: m.param_sized_multiple)
    metrics: dict[str, float] = {
        "test/accuracy": last.test_accuracy, "val/accuracy": last.val_accuracy,
        "target/steps": sum(r.steps for r in results),
        "memory/models_alive": max(r.memory.models_alive for r in results),
        "memory/peak_rss_bytes": max(r.memory.peak_rss_bytes for r in results),
        "memory/param_sized_multiple": peak.param_sized_multiple, "time/method_s": sum(r.wall_s for r in results)}
    metrics.update(_continual_metrics(summary, to_merge))
    tracker.log_metrics(summary.parent_run_id, metrics, {**tags, "final_version": summary.aliases_version})


def _continual_metrics(summary: FlowSummary, to_merge: list[AreaSource]) -> dict[str, float]:
    """Average accuracy and backward/forward transfer over this run's stages x domains (see
    flows/reports/accuracy_matrix.py); a mean start counts as every source it averages, merged at its stage."""
    from flows.pipeline.start import merged_domains
    from flows.reports.accuracy_matrix import cl_summaries

    rows = [s.domain_accuracy for s in summary.steps]
    if not rows or not rows[-1]:
        return {}
    domains = list(rows[-1])
    found = cl_summaries(rows, [merged_domains(source) for source in to_merge], domains, summary.target)
    return {f"cl/{k}": v for k, v in found.items() if v is not None}


def _run_baselines(prep: Prepared) -> None:
    """Each baseline of params.yaml on the same target budget, logged as its own MLflow run."""
    from flows.pipeline.core_run import method_context
    from flows.reports.tables import result_row

    cfg, summary, tracker, run_tags, progress = prep.cfg, prep.summary, prep.tracker, prep.run_tags, prep.progress
    ctx = method_context(cfg, prep.ws, summary.target, summary.all_sources, prep.classes, progress, prep.compute)
    settle()
    summary.methods.append(_grasp_row(summary))
    for method in cfg.baselines.methods:
        progress.stage(method)
        progress.say(f"baseline {method} ...")
        result = tasks.baseline_task(method, ctx)
        tasks.log_baseline_task(tracker, result, flatten(cfg), run_tags)
        summary.methods.append(result_row(result, summary.target))


def _grasp_row(summary: FlowSummary) -> dict[str, object]:
    """GRASP's row of the method table, from the registered stages."""
    results = [s.computed for s in summary.steps]
    last = results[-1]
    return {"method": "grasp", "target": summary.target, "test_accuracy": round(last.test_accuracy, 4),
            "val_accuracy": round(last.val_accuracy, 4), "target_steps": sum(r.steps for r in results),
            "peak_models_alive": max(r.memory.models_alive for r in results),
            "peak_param_multiple": max(r.memory.param_sized_multiple for r in results),
            "peak_rss_mb": round(max(r.memory.peak_rss_bytes for r in results) / 2**20, 1),
            "wall_s": round(sum(r.wall_s for r in results), 2), "version": summary.versions[-1]}
