"""`grasp run`: the Prefect flow. The DAG and nothing else; every box is a task in flows/tasks.py.

materialise data -> DVC-track data -> validate (GX) -> base -> train sources (fan-out) ->
DVC-track sources -> per source: align/transfer/fine-tune/evaluate -> MLflow run + version -> aliases
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import tasks
from flows.progress import Progress
from flows.settings import code_commit
from flows.steps import StepArtifact
from flows.workspace import Workspace
from grasp_core.config import config_hash, flatten, load_config
from grasp_core.memory import settle


@dataclass
class FlowSummary:
    target: str
    sources: list[str]
    model_name: str
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    steps: list[StepArtifact] = field(default_factory=list)
    parent_run_id: str = ""
    parent_version: str = ""  # the champion an incremental run started from ("" = from scratch)
    merged_before: int = 0  # sources already in that champion's lineage
    all_sources: list[str] = field(default_factory=list)  # every source in the area (baselines use them all)
    data_md5: str = ""
    sources_trained: int = 0
    methods: list[dict] = field(default_factory=list)  # baseline rows when --baselines
    report: str = ""  # path of the lineage plot (accuracy and memory along the merge steps)
    promotion: str = ""  # the gate's message when auto_promote
    report_html: str = ""  # self-contained HTML report of the run (also an MLflow artifact)


@flow(name="grasp-run", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def grasp_run_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                   dvc_remote: str | None = None, baselines: bool = False, full: bool = False,
                   auto_promote: bool = False, quiet: bool = False, verbose: bool = False) -> FlowSummary:
    """Validate, version, train the missing sources, merge them one at a time and register each step.

    One run per workspace at a time: a second one is refused (overlapping scheduled runs never merge
    the same source twice). `auto_promote` runs the promotion gate on the new challenger.
    """
    from flows.lock import RunLock

    with RunLock(Path(workdir), command="grasp run"):
        summary = _pipeline(params_path, workdir, tracking_uri, dvc_remote, baselines, full, quiet, verbose)
        if auto_promote and summary.versions:
            summary.promotion = tasks.promote_task(Path(workdir), tracking_uri, load_config(Path(params_path)))
    return summary


def _pipeline(params_path: str, workdir: str, tracking_uri: str | None, dvc_remote: str | None,
              baselines: bool, full: bool, quiet: bool, verbose: bool) -> FlowSummary:
    """The DAG of one run (see the module docstring)."""
    from prefect.runtime import flow_run

    from flows.tracking import Tracker

    ws, progress = Workspace(Path(workdir)), Progress(quiet, verbose)
    cfg = load_config(Path(params_path))
    target, sources, classes = tasks.materialise_task(cfg, ws, progress)
    tasks.dvc_init_task(ws, dvc_remote)
    data_future = tasks.dvc_track_task.submit(ws, cfg.data.root)  # DVC hashes in a subprocess while GX validates
    try:
        tasks.validate_task(ws.data(cfg), ws.root / "reports" / "validation")
    finally:
        data_v = data_future.result()
    progress.say(f"data valid; target {target}; sources {', '.join(sources)}")
    base = tasks.base_task(cfg, ws, classes, sources[0], progress)
    futures = [tasks.source_task.submit(cfg, ws, name, classes, base, cfg.seed + 1 + i)
               for i, name in enumerate(sources)]
    trained = sum(f.result()[1] for f in futures)
    area = tasks.area_task(ws, target)
    src_v = tasks.dvc_track_task(ws, "checkpoints/sources")
    progress.say(f"sources ready ({trained} trained, {len(area) - trained} re-used or added)")
    tracker = Tracker(ws.root, tracking_uri=tracking_uri)
    summary = FlowSummary(target, [], f"grasp-{target}", data_md5=data_v.md5, sources_trained=trained)
    plan = tasks.plan_task(tracker, summary.model_name, area, ws.checkpoints / "targets" / target, full)
    summary.sources, summary.parent_version = [s.domain for s in plan.to_merge], plan.parent_version
    summary.merged_before, summary.all_sources = plan.merged_before, [s.domain for s in area]
    if not plan.to_merge:
        progress.say(f"nothing new: champion v{plan.parent_version} already holds all {plan.merged_before} "
                     "sources; nothing registered")
        return summary
    run_tags = {"dataset_dvc_md5": data_v.md5, "sources_dvc_md5": src_v.md5, "params_sha256": config_hash(cfg),
                "code_commit": code_commit(), "flow_run_id": str(flow_run.id), "policy": cfg.transfer.policy,
                "target_domain": target, "method": "grasp", "incremental_from": plan.parent_version}
    with tracker.parent_run(f"grasp-{target}", flatten(cfg), run_tags, params_file=Path(params_path)) as parent_id:
        summary.parent_run_id = parent_id
        _merge_all(cfg, ws, summary, classes, plan, src_v.path, tracker, run_tags, progress)
        summary.aliases = tasks.alias_task(tracker, summary.model_name, summary.versions[-1])
        _log_final(tracker, summary)
    summary.report = tasks.report_task(ws, tracker.tracking_uri, summary.model_name, summary.versions[-1])
    if baselines:
        _run_baselines(cfg, ws, summary, classes, tracker, run_tags, progress)
    summary.report_html = tasks.run_report_task(summary, ws, tracker.tracking_uri, cfg.transfer.threshold)
    return summary


def _merge_all(cfg, ws, summary, classes, plan, sources_dvc, tracker, run_tags, progress) -> None:  # type: ignore[no-untyped-def]
    """The sequential part: one stage per source, each registered before the next starts."""
    from flows.versioning import file_md5_in_dir

    parent, parent_version = plan.parent, plan.parent_version
    settle()  # imports are done and no model is alive: make live-tensor scans cheap
    for stage, source in enumerate(plan.to_merge, start=plan.start_stage):
        ckpt, name = source.checkpoint, source.domain
        step = tasks.grasp_stage_task(cfg, ws, summary.target, classes, ckpt, name, stage, parent, progress)
        tags = {**run_tags, "stage": str(stage), "source_domain": name, "source_sha256": ckpt.sha256,
                "source_dvc_md5": file_md5_in_dir(ws.root, sources_dvc, f"{name}.safetensors") or "",
                "base_sha256": ckpt.header.extra.get("base_sha256", ""), "source_origin":
                ckpt.header.extra.get("origin", "trained"), "checkpoint_sha256": step.checkpoint.sha256,
                "chain_sha256": step.chain_sha256, "parent_version": parent_version}
        parent_version = tasks.register_task(tracker, summary.parent_run_id, summary.model_name, step, classes, tags,
                                             ws.root / "reports" / summary.parent_run_id)
        summary.versions.append(parent_version)
        summary.steps.append(step)
        parent = step


def run_pipeline(params: Path, workdir: Path, baselines: bool = False, tracking_uri: str | None = None,
                 dvc_remote: str | None = None, full: bool = False, auto_promote: bool = False,
                 quiet: bool = False, verbose: bool = False) -> FlowSummary:
    """Run the flow (on Prefect's ephemeral API unless PREFECT_API_URL is set)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # A synchronous flow otherwise waits up to 1 s for its heartbeat thread to join.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return grasp_run_flow(params_path=str(params), workdir=str(workdir), tracking_uri=tracking_uri,
                              dvc_remote=dvc_remote, baselines=baselines, full=full,
                              auto_promote=auto_promote, quiet=quiet, verbose=verbose)


def _log_final(tracker, summary: FlowSummary) -> None:  # type: ignore[no-untyped-def]
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
    tracker.log_metrics(summary.parent_run_id, metrics, {"final_version": summary.versions[-1]})


def _continual_metrics(summary: FlowSummary) -> dict[str, float]:
    """Average accuracy and backward/forward transfer over this run's stages x domains (see flows/accuracy_matrix)."""
    from flows.accuracy_matrix import cl_summaries

    rows = [s.domain_accuracy for s in summary.steps]
    if not rows or not rows[-1]:
        return {}
    domains = list(rows[-1])
    found = cl_summaries(rows, [s.result.source_name for s in summary.steps if s.result], domains, summary.target)
    return {f"cl/{k}": v for k, v in found.items() if v is not None}


def _run_baselines(cfg, ws, summary, classes, tracker, run_tags, progress) -> None:  # type: ignore[no-untyped-def]
    """Each baseline of params.yaml on the same target budget, logged as its own MLflow run."""
    from flows.report import result_row
    from flows.runner import method_context

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
