"""`grasp run`: the Prefect flow. The DAG and nothing else; every box is a task in flows/pipeline/tasks.py.

materialise data -> DVC-track data -> validate (GX) -> base -> train sources (fan-out) ->
DVC-track sources -> per source: align/transfer/fine-tune/evaluate -> MLflow run + version ->
lineage plot, beside the data's DVC push -> aliases -> run report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as replace_plan
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import tasks
from flows.pipeline.source_ledger import lineage_tags
from flows.pipeline.stage import StepArtifact
from flows.pipeline.workspace import Workspace
from flows.reports.progress import Progress, link_mlflow_run
from flows.runtime.options import RunOptions
from flows.runtime.settings import code_commit, route_run_logs
from flows.stores.validation import prewarmed_gx
from grasp_core.config import config_hash, flatten, load_config
from grasp_core.config import replace as replace_config
from grasp_core.grasp import check_plugins
from grasp_core.memory import settle
from grasp_core.names import check_name

VALIDATION_DIR = Path("reports") / "validation"  # the GX results, under the workspace


@dataclass
class FlowSummary:
    target: str
    sources: list[str]
    model_name: str
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    aliases_version: str = ""  # the version the aliases point at (the last, or the best with keep_global_best)
    steps: list[StepArtifact] = field(default_factory=list)
    parent_run_id: str = ""
    parent_version: str = ""  # the champion an incremental run started from ("" = from scratch)
    merged_before: int = 0  # sources already in that champion's lineage
    all_sources: list[str] = field(default_factory=list)  # every source in the area (baselines use them all)
    data_md5: str = ""
    sources_trained: int = 0
    methods: list[dict] = field(default_factory=list)  # baseline rows when --baselines
    skipped: list[dict] = field(default_factory=list)  # refused source files left out (on_bad_source: skip)
    resumed: bool = False  # continued the last version of an interrupted run (parent_version)
    report: str = ""  # path of the lineage plot (accuracy and memory along the merge steps)
    promotion: str = ""  # the gate's message when auto_promote
    report_html: str = ""  # self-contained HTML report of the run (also an MLflow artifact)


@flow(name="grasp-run", task_runner=ThreadPoolTaskRunner(max_workers=6), log_prints=False)
def grasp_run_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                   dvc_remote: str | None = None, baselines: bool = False, full: bool = False,
                   auto_promote: bool = False, quiet: bool = False, verbose: bool = False,
                   runner: str = "local", lock_wait_s: float = 0.0) -> FlowSummary:
    """Validate, version, train the missing sources, merge them one at a time and register each step.

    `runner` places the source-training fan-out: "local" threads, "dask" (a local cluster) or
    "dask=tcp://HOST:PORT" (see flows/runtime/runners.py).

    One run per workspace at a time: a second one is refused (overlapping scheduled runs never merge
    the same source twice), or waits up to `lock_wait_s` (scheduled runs; the wait is logged).
    `auto_promote` runs the promotion gate on the new challenger.
    """
    from flows.runtime.lock import RunLock

    route_run_logs(verbose)  # here, so served (scheduled) runs in their own processes log their stages too

    with RunLock(Path(workdir), wait_s=lock_wait_s, command="grasp run"):
        summary = _pipeline(params_path, workdir, tracking_uri, dvc_remote, baselines, full, quiet, verbose, runner)
        if auto_promote and summary.versions:
            summary.promotion = tasks.promote_task(Path(workdir), tracking_uri, load_config(Path(params_path)))
    return summary


@flow(name="grasp-all-targets", task_runner=ThreadPoolTaskRunner(max_workers=6), log_prints=False)
def grasp_all_targets_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                           dvc_remote: str | None = None, baselines: bool = False, full: bool = False,
                           quiet: bool = False, verbose: bool = False, runner: str = "local") -> list[FlowSummary]:
    """Leave-one-domain-out: every domain as the target in turn, each its own registered model `grasp-<domain>`.

    One lock for the whole sweep. Every domain's source model is trained first, in one fan-out on `runner`
    (a domain's source is the same for every target: its seed is fixed by its place in time,
    flows.pipeline.workspace.source_seed); then each target's merge runs in turn and re-uses them.
    """
    from flows.runtime.lock import RunLock

    route_run_logs(verbose)  # here, so served (scheduled) runs in their own processes log their stages too

    with RunLock(Path(workdir), command="grasp run --all-targets"):
        ws, cfg = Workspace(Path(workdir)), load_config(Path(params_path))
        check_plugins(cfg)  # a misspelt policy or criterion fails before any data or model is written
        progress = Progress(quiet, verbose, run_log=True)
        with prewarmed_gx(ws.root / VALIDATION_DIR) as gx:
            target, sources, classes = tasks.materialise_task(cfg, ws, progress)
            tasks.validate_task(ws.data(cfg), ws.root / VALIDATION_DIR, gx, cfg)  # the gate before any training
        domains = [*sources, target]
        base = tasks.base_task(cfg, ws, classes, sources[0], progress)
        trained = sum(fresh for _, fresh in train_sources(cfg, ws, domains, domains, classes, base, runner))
        progress.say(f"{len(domains)} source models ready ({trained} trained), one per domain, for every target")
        preps = [_prepare(params_path, workdir, tracking_uri, dvc_remote, full, quiet, verbose, runner,
                          target_override=domain) for domain in domains]
        chains = merge_targets(preps, runner)  # independent targets fan out; registration stays here
        return [_finish(prep, baselines, chains.get(prep.summary.target)) for prep in preps]


@dataclass
class _Prepared:
    """One target's run up to the merge: checked, versioned, planned, with its tags (see _prepare)."""

    cfg: Any  # grasp_core.config.Config with this target
    ws: Workspace
    progress: Progress
    classes: list[str]
    summary: FlowSummary
    plan: Any = None  # flows.pipeline.plan.MergePlan
    tracker: Any = None  # flows.stores.tracking.Tracker
    data_v: Any = None  # futures of DVC TrackedOutputs: the data added, the sources added and pushed,
    src_v: Any = None
    data_push: Any = None  # and the data pushed (awaited before any alias moves)
    run_tags: dict = field(default_factory=dict)
    params_path: str = ""
    done: bool = False  # nothing to merge: `summary` is final


def _pipeline(params_path: str, workdir: str, tracking_uri: str | None, dvc_remote: str | None,
              baselines: bool, full: bool, quiet: bool, verbose: bool, runner: str = "local",
              target_override: str = "") -> FlowSummary:
    """The DAG of one run (see the module docstring): prepare, then merge and register."""
    prep = _prepare(params_path, workdir, tracking_uri, dvc_remote, full, quiet, verbose, runner, target_override)
    return _finish(prep, baselines)


def _prepare(params_path: str, workdir: str, tracking_uri: str | None, dvc_remote: str | None, full: bool,
             quiet: bool, verbose: bool, runner: str = "local", target_override: str = "") -> _Prepared:
    """Data, GX gate, DVC, sources and the merge plan of one target; everything before the first stage."""
    from prefect.runtime import flow_run

    ws, progress = Workspace(Path(workdir)), Progress(quiet, verbose, run_log=True)
    cfg = load_config(Path(params_path))
    check_plugins(cfg)  # a misspelt policy or criterion fails before any data or model is written
    if target_override:
        cfg = replace_config(cfg, data__target=target_override)
    # Tool work runs beside the critical path (GX gate -> training -> merge) and is awaited where needed:
    # GX imports in its own process while the data is written, then validates there; meanwhile DVC
    # versions the data (a subprocess) and MLflow opens in this process, which would otherwise sit idle.
    with prewarmed_gx(ws.root / VALIDATION_DIR) as gx:
        target, sources, classes = tasks.materialise_task(cfg, ws, progress)
        data_v = tasks.dvc_version_data_task.submit(ws, dvc_remote, cfg.data.root)
        tracker_future = tasks.open_tracking_task.submit(ws, tracking_uri)
        try:
            tasks.validate_task(ws.data(cfg), ws.root / VALIDATION_DIR, gx, cfg)
        except BaseException:
            wait([data_v, tracker_future])  # leave no DVC subprocess or half-opened store behind a failed gate
            raise
    progress.say(f"data valid; target {target}; sources {', '.join(sources)}")
    base = tasks.base_task(cfg, ws, classes, sources[0], progress)
    trained = sum(fresh for _, fresh in train_sources(cfg, ws, sources, [*sources, target], classes, base, runner))
    area, bad = tasks.area_task(ws, target, cfg.on_bad_source, progress, cfg.limits)
    src_v = tasks.dvc_track_task.submit(ws, "checkpoints/sources", wait_for=[data_v])
    # the data's push (thousands of files) runs beside the merge and registrations; the aliases wait for it
    data_push = tasks.dvc_push_task.submit(ws, data_v, wait_for=[src_v])
    progress.say(f"sources ready ({trained} trained, {len(area) - trained} re-used or added)")
    tracker = tracker_future.result()
    summary = FlowSummary(target, [], check_name(f"grasp-{target}", "model name"), sources_trained=trained)
    prep = _Prepared(cfg, ws, progress, classes, summary, tracker=tracker, data_v=data_v, src_v=src_v,
                     data_push=data_push,
                     params_path=params_path)
    plan = tasks.plan_task(tracker, summary.model_name, area, ws.targets(target), full,
                           config_hash(cfg))
    plan = prep.plan = replace_plan(plan, to_merge=_in_merge_order(cfg, ws, target, classes, plan.to_merge,
                                                                   progress))
    summary.sources, summary.parent_version = [s.domain for s in plan.to_merge], plan.parent_version
    summary.merged_before, summary.all_sources = plan.merged_before, [s.domain for s in area]
    summary.resumed = plan.resumed
    summary.skipped = [{"file": b.path.name, "reason": b.reason} for b in bad]
    if plan.ended_runs:
        progress.say(f"marked {len(plan.ended_runs)} MLflow run(s) of a dead process KILLED")
    if plan.resumed:
        progress.say(f"resuming an interrupted run from v{plan.parent_version} ({plan.merged_before} source(s) "
                     f"merged); {len(plan.to_merge)} to go")
    if not plan.to_merge:
        summary.data_md5 = data_v.result().md5
        _raise_failed_dvc(src_v, data_push)  # raises if the sources' or the data's versioning failed
        prep.done = True
        if plan.resumed:  # it registered every stage but died before the aliases
            summary.aliases = tasks.alias_task(tracker, summary.model_name, plan.parent_version)
        else:
            progress.say(f"nothing new: champion v{plan.parent_version} already holds all {plan.merged_before} "
                         "sources; nothing registered")
        return prep
    prep.run_tags = {"params_sha256": config_hash(cfg), "code_commit": code_commit(),
                     "flow_run_id": str(flow_run.id), "policy": cfg.transfer.policy, "target_domain": target,
                     "method": "grasp", "incremental_from": plan.parent_version if not plan.resumed else
                     _lineage_start(tracker, summary), "resumed_from": plan.parent_version if plan.resumed else "",
                     "skipped_sources": _skipped_tag(summary.skipped)}
    return prep


def _finish(prep: _Prepared, baselines: bool, computed: list[StepArtifact] | None = None) -> FlowSummary:
    """Merge (or take the `computed` stages of a fan-out) and register them, set aliases, report."""
    summary = prep.summary
    if prep.done:
        return summary
    cfg, ws, tracker, run_tags, progress = prep.cfg, prep.ws, prep.tracker, prep.run_tags, prep.progress
    try:
        report = _finish_merge(prep, computed)
    except BaseException:
        wait([prep.data_push])  # no DVC subprocess left behind a failed run
        raise
    summary.report = report.result()
    if baselines:
        _run_baselines(cfg, ws, summary, prep.classes, tracker, run_tags, progress)
    summary.report_html = tasks.run_report_task(summary, ws, tracker.tracking_uri,
                                                cfg.transfer.threshold)
    return summary


def _finish_merge(prep: _Prepared, computed: list[StepArtifact] | None):  # type: ignore[no-untyped-def]
    """Merge and register under the parent run; aliases move once the data is on the DVC remote.

    Returns the future of the lineage plot (report_task): it needs only the registered versions, so it
    draws while the data's push finishes and the aliases move.
    """
    summary, cfg, ws, tracker, run_tags = prep.summary, prep.cfg, prep.ws, prep.tracker, prep.run_tags
    with tracker.parent_run(f"grasp-{summary.target}", flatten(cfg), run_tags,
                            params_file=Path(prep.params_path)) as parent_id:
        summary.parent_run_id = parent_id
        link_mlflow_run(tracker.tracking_uri, tracker.experiment_id, parent_id)
        _merge_all(cfg, ws, summary, prep.classes, prep.plan, (prep.data_v, prep.src_v), tracker, run_tags,
                   prep.progress, computed)
        report = tasks.report_task.submit(ws, tracker.tracking_uri, summary.model_name, summary.versions[-1])
        try:
            _move_aliases(prep)
        except BaseException:
            wait([report])  # no plot still drawing behind a failed run
            raise
    return report


def _move_aliases(prep: _Prepared) -> None:
    """Once the data is on the DVC remote: the final tags and metrics of the parent run, and the aliases."""
    summary, cfg, tracker, run_tags = prep.summary, prep.cfg, prep.tracker, prep.run_tags
    _raise_failed_dvc(prep.data_v, prep.src_v, prep.data_push)
    summary.data_md5 = prep.data_v.result().md5
    run_tags.update(dataset_dvc_md5=summary.data_md5, sources_dvc_md5=prep.src_v.result().md5)
    summary.aliases_version = _final_version(cfg, summary)
    summary.aliases = tasks.alias_task(tracker, summary.model_name, summary.aliases_version)
    _log_final(tracker, summary, run_tags)


@flow(name="merge-targets", log_prints=False)
def merge_targets_flow(jobs: list[dict]) -> list:  # type: ignore[type-arg]
    """The fan-out of independent targets: one `merge-chain` task per target on this flow's task runner."""
    futures = [tasks.merge_chain_task.submit(**job) for job in jobs]
    return [f.result() for f in futures]


def merge_targets(preps: list[_Prepared], runner: str) -> dict[str, list[StepArtifact]]:
    """Compute the merge chains of several targets at once on `runner` (threads or Dask); target -> stages.

    Each chain is sequential; chains of different targets are independent and run at once on Dask (one per
    worker process). On local threads they run one after another: the memory figures (live models in the
    process) would otherwise count another target's models. Registration stays in the flow's process
    (_finish), one target after another.
    """
    from flows.runtime.runners import fanout_environment, parse_runner, task_runner
    jobs = [{"cfg": p.cfg, "ws": p.ws, "target": p.summary.target, "classes": p.classes,
             "sources": [(s.domain, s.checkpoint) for s in p.plan.to_merge],
             "start_stage": p.plan.start_stage, "parent": p.plan.parent}
            for p in preps if not p.done]
    if not jobs:
        return {}
    spec = parse_runner(runner)
    if spec.kind == "local":  # one process: a second chain's models would count in this one's memory figures
        from prefect.task_runners import ThreadPoolTaskRunner as Threads

        chains = merge_targets_flow.with_options(task_runner=Threads(max_workers=1))(jobs)
    else:  # a chain per worker process: each measures only its own models
        with fanout_environment(spec):
            chains = merge_targets_flow.with_options(task_runner=task_runner(spec))(jobs)
    return {job["target"]: chain for job, chain in zip(jobs, chains, strict=True)}


@flow(name="train-sources", log_prints=False)
def train_sources_flow(cfg, ws: Workspace, names: list[str], classes: list[str], base, seeds: list[int]) -> list:  # type: ignore[no-untyped-def]
    """The fan-out: one `train-source` task per domain on this flow's task runner (threads or Dask)."""
    futures = [tasks.source_task.submit(cfg, ws, name, classes, base, seed)
               for name, seed in zip(names, seeds, strict=True)]
    return [f.result() for f in futures]


def train_sources(cfg, ws: Workspace, names: list[str], domains: list[str], classes: list[str], base,  # type: ignore[no-untyped-def]
                  runner: str = "local") -> list:
    """Train (or re-use) the source model of every domain in `names`, fanned out on `runner`.

    Returns [(SavedCheckpoint, trained_now)] in `names` order. A source's seed is fixed by its domain's
    place among all `domains` (flows.pipeline.workspace.source_seed), as in the core run.
    """
    from flows.pipeline.workspace import source_seed
    from flows.runtime.runners import fanout_environment, parse_runner, task_runner

    spec = parse_runner(runner)
    seeds = [source_seed(cfg, domains, name) for name in names]
    with fanout_environment(spec):
        return train_sources_flow.with_options(task_runner=task_runner(spec))(cfg, ws, names, classes, base, seeds)


def _merge_all(cfg, ws, summary, classes, plan, dvc_outputs, tracker, run_tags, progress, computed=None) -> None:  # type: ignore[no-untyped-def]
    """The sequential part: one stage per source. Each stage's registration is submitted as a future and
    runs while the next stage trains; registrations chain (each waits for its parent's version)."""
    data_v, src_v = dvc_outputs
    registrations: list = []
    settle()  # imports are done and no model is alive: make live-tensor scans cheap
    try:
        _stages(cfg, ws, summary, classes, plan, data_v, src_v, tracker, run_tags, progress, registrations, computed)
    except BaseException:
        wait(registrations)  # the stages before the failure stay registered, as in a sequential run
        raise
    wait(registrations)
    _raise_failed_dvc(data_v, src_v)  # else a registration that never ran reports only "PENDING"
    summary.versions.extend(f.result() for f in registrations)  # raises the first failed registration


def _raise_failed_dvc(*outputs) -> None:  # type: ignore[no-untyped-def]
    """Raise the error of a failed DVC future. The tasks that take a DVC output never run when it failed:
    Prefect leaves them Pending ("NotReady"), and their `.result()` would raise UnfinishedRun instead."""
    for output in outputs:
        if output is not None:
            output.result()


def _stages(cfg, ws, summary, classes, plan, data_v, src_v, tracker, run_tags, progress, registrations,  # type: ignore[no-untyped-def]
            computed=None) -> None:
    """Compute each stage here (or take it from `computed`, a fan-out's chain) and submit its registration."""
    parent, parent_version = plan.parent, plan.parent_version
    for i, (stage, source) in enumerate(enumerate(plan.to_merge, start=plan.start_stage)):
        ckpt, name = source.checkpoint, source.domain
        if computed is not None:
            step = computed[i]
            progress.step(step.result)
        else:
            if registrations:  # registering loads the model once more (MLflow checks the input example):
                registrations[-1].wait()  # beside a stage that would be a third model alive in this process
            step = tasks.grasp_stage_task(cfg, ws, summary.target, classes, ckpt, name, stage, parent, progress)
        tags = {**run_tags, "stage": str(stage), "source_domain": name, "source_sha256": ckpt.sha256,
                **lineage_tags(ws, name, ckpt.sha256, ckpt.header),  # header claims kept apart from facts
                "checkpoint_sha256": step.checkpoint.sha256, "chain_sha256": step.chain_sha256}
        parent_version = tasks.register_task.submit(tracker, summary.parent_run_id, summary.model_name, step,
                                                    classes, tags, ws.root / "reports" / summary.parent_run_id,
                                                    parent_version, data_v, src_v)
        registrations.append(parent_version)
        summary.steps.append(step)
        parent = step


def _in_merge_order(cfg, ws: Workspace, target: str, classes: list[str], to_merge: list, progress: Progress) -> list:  # type: ignore[no-untyped-def]
    """The sources of this run in `transfer.order` (given = the data's time order, nearest in time first, most
    aligned first, or best scored first); time is the data's domain list (`_domains.txt`)."""
    from grasp_core.data import list_domains
    from grasp_core.order import in_time_order, order_sources

    timeline = list_domains(ws.data(cfg))
    by_name = {s.domain: s for s in to_merge}
    names = in_time_order(list(by_name), timeline)
    if cfg.transfer.order == "given" or len(names) < 2:
        return [by_name[name] for name in names]
    if cfg.transfer.order in ("aligned", "scored"):  # a streaming pre-pass over the sources: two models at most
        from flows.pipeline.core_run import method_context
        from grasp_core.methods.grasp_method import merge_order

        ordered = merge_order(method_context(cfg, ws, target, names, classes, progress))
    else:
        ordered = order_sources(names, target, cfg.transfer.order, timeline=timeline)
    progress.say(f"merge order ({cfg.transfer.order}): {', '.join(ordered)}")
    if cfg.transfer.start != "first":  # the mean start has no source checkpoint for lineage/resume to point at yet
        progress.say(f"transfer.start '{cfg.transfer.start}': the pipeline starts from the order's first source; "
                     "the mean start runs in `grasp run --engine core` and the benches (docs/methods.md)")
    return [by_name[name] for name in ordered]


def _final_version(cfg, summary: FlowSummary) -> str:  # type: ignore[no-untyped-def]
    """The version the run's aliases point at: the last stage, or with `transfer.keep_global_best` the
    stage of this run with the best validation accuracy (the earliest on a tie)."""
    if not cfg.transfer.keep_global_best:
        return summary.versions[-1]
    vals = [s.result.val_accuracy for s in summary.steps]
    return summary.versions[vals.index(max(vals))]


def _skipped_tag(skipped: list[dict]) -> str:
    """The refused files of this run as a JSON tag (reasons cut so the tag stays within MLflow's limit)."""
    import json

    return json.dumps([{"file": s["file"], "reason": s["reason"][-300:]} for s in skipped][:20]) if skipped else ""


def _lineage_start(tracker, summary: FlowSummary) -> str:  # type: ignore[no-untyped-def]
    """A resumed run keeps the `incremental_from` of the run it continues (its lineage's starting champion)."""
    by_version = {v["version"]: v["tags"] for v in tracker.versions(summary.model_name)}
    return by_version.get(summary.parent_version, {}).get("incremental_from", "")


def run_pipeline(opts: RunOptions, baselines: bool = False, auto_promote: bool = False) -> FlowSummary:
    """Run the flow (on Prefect's ephemeral API unless PREFECT_API_URL is set) where and how `opts` say."""
    return grasp_run_flow(params_path=str(opts.params), workdir=str(opts.workdir), tracking_uri=opts.tracking_uri,
                          dvc_remote=opts.dvc_remote, baselines=baselines, full=opts.full,
                          auto_promote=auto_promote, quiet=opts.quiet, verbose=opts.verbose, runner=opts.runner)


def run_all_targets(opts: RunOptions, baselines: bool = False) -> list[FlowSummary]:
    """`grasp run --all-targets`: the leave-one-domain-out sweep (see grasp_all_targets_flow)."""
    return grasp_all_targets_flow(params_path=str(opts.params), workdir=str(opts.workdir),
                                  tracking_uri=opts.tracking_uri, dvc_remote=opts.dvc_remote, baselines=baselines,
                                  full=opts.full, quiet=opts.quiet, verbose=opts.verbose, runner=opts.runner)


def all_targets_rows(summaries: list[FlowSummary]) -> list[dict]:
    """One row per (target, method): GRASP's final version and, with --baselines, every baseline."""
    rows = []
    for s in summaries:
        if s.methods:
            rows.extend({"target": s.target, **{k: v for k, v in m.items() if k != "target"}} for m in s.methods)
        elif s.steps:
            rows.append({"target": s.target, **{k: v for k, v in _grasp_row(s).items() if k != "target"}})
        else:  # nothing new for this target: its champion already holds every source
            rows.append({"target": s.target, "method": "grasp", "version": s.parent_version, "note": "nothing new"})
    return rows


def _log_final(tracker, summary: FlowSummary, tags: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """GRASP's method-level figures on the parent run, with the same keys as the baseline runs."""
    last = summary.steps[-1].result
    peak = max((s.result.memory for s in summary.steps), key=lambda m: m.param_sized_multiple)
    metrics = {"test/accuracy": last.test_accuracy, "val/accuracy": last.val_accuracy,
               "target/steps": sum(s.result.steps for s in summary.steps),
               "memory/models_alive": max(s.result.memory.models_alive for s in summary.steps),
               "memory/peak_rss_bytes": max(s.result.memory.peak_rss_bytes for s in summary.steps),
               "memory/param_sized_multiple": peak.param_sized_multiple,
               "time/method_s": sum(s.result.wall_s for s in summary.steps)}
    metrics.update(_continual_metrics(summary))
    tracker.log_metrics(summary.parent_run_id, metrics, {**tags, "final_version": summary.aliases_version})


def _continual_metrics(summary: FlowSummary) -> dict[str, float]:
    """Average accuracy and backward/forward transfer over this run's stages x domains (see flows/accuracy_matrix)."""
    from flows.reports.accuracy_matrix import cl_summaries

    rows = [s.domain_accuracy for s in summary.steps]
    if not rows or not rows[-1]:
        return {}
    domains = list(rows[-1])
    found = cl_summaries(rows, [s.result.source_name for s in summary.steps if s.result], domains, summary.target)
    return {f"cl/{k}": v for k, v in found.items() if v is not None}


def _run_baselines(cfg, ws, summary, classes, tracker, run_tags, progress) -> None:  # type: ignore[no-untyped-def]
    """Each baseline of params.yaml on the same target budget, logged as its own MLflow run."""
    from flows.pipeline.core_run import method_context
    from flows.reports.tables import result_row

    ctx = method_context(cfg, ws, summary.target, summary.all_sources, classes, progress)
    settle()
    summary.methods.append(_grasp_row(summary))
    for method in cfg.baselines.methods:
        progress.stage(method)
        progress.say(f"baseline {method} ...")
        result = tasks.baseline_task(method, ctx)
        tasks.log_baseline_task(tracker, result, flatten(cfg), run_tags)
        summary.methods.append(result_row(result, summary.target))


def _grasp_row(summary: FlowSummary) -> dict:
    """GRASP's row of the method table, from the registered stages."""
    last, results = summary.steps[-1].result, [s.result for s in summary.steps]
    return {"method": "grasp", "target": summary.target, "test_accuracy": round(last.test_accuracy, 4),
            "val_accuracy": round(last.val_accuracy, 4), "target_steps": sum(r.steps for r in results),
            "peak_models_alive": max(r.memory.models_alive for r in results),
            "peak_param_multiple": max(r.memory.param_sized_multiple for r in results),
            "peak_rss_mb": round(max(r.memory.peak_rss_bytes for r in results) / 2**20, 1),
            "wall_s": round(sum(r.wall_s for r in results), 2), "version": summary.versions[-1]}
