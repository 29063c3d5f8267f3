"""Prefect tasks: each loads what it needs, calls one grasp_core (or tool) function, saves, and
returns paths, hashes or detached results, never live models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from flows.pipeline.stage import StepArtifact, cached_target, cached_tests, target_step
from flows.pipeline.workspace import (
    Workspace,
    ensure_base,
    ensure_source,
    layout_classes,
    materialise_data,
    resolve_roles,
)
from flows.reports.progress import Progress
from flows.runtime.execution import Compute
from flows.runtime.faults import TOOL_RETRIES, transient_faults
from grasp_core.checkpoints import SavedCheckpoint
from grasp_core.config import Config, LimitsConfig
from grasp_core.data import input_shape
from grasp_core.methods import MethodContext, MethodResult, run_method
from grasp_core.names import path_inside

if TYPE_CHECKING:
    from flows.pipeline.plan import MergePlan
    from flows.pipeline.sources import AreaSource, BadSource
    from flows.pipeline.summary import FlowSummary
    from flows.stores.tracking import Tracker
    from flows.stores.validation import GxWorker, ValidationReport
    from flows.stores.versioning import TrackedOutput

# Our own recipe hashes decide re-use (see flows/pipeline/workspace.py); Prefect's input hashing would only
# cost time on configs and checkpoints, so no task caches.
class TaskOptions(TypedDict):
    """Keyword arguments of `prefect.task` shared by every task here."""

    cache_policy: CachePolicy
    persist_result: bool


TASK: TaskOptions = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="materialise-data", **TASK)
def materialise_task(cfg: Config, ws: Workspace, progress: Progress) -> tuple[str, list[str], list[str]]:
    """Write the embedded benchmark when missing; returns (target, sources, classes)."""
    domains, generated = materialise_data(cfg, ws)
    if generated:
        progress.say(f"wrote the embedded benchmark: {len(domains)} domains under {ws.data(cfg)}")
    target, sources = resolve_roles(cfg, domains)
    return target, sources, layout_classes(cfg, ws)


@task(name="dvc-track", task_run_name="dvc-track[{target}]", **TASK, **TOOL_RETRIES)
def dvc_track_task(ws: Workspace, target: str) -> TrackedOutput:
    from flows.stores.versioning import track

    with transient_faults(f"DVC repository {ws.root}"):
        return track(ws.root, target)


@task(name="dvc-version-data", task_run_name="dvc-version-data[{target}]", **TASK, **TOOL_RETRIES)
def dvc_version_data_task(ws: Workspace, remote: str | None, target: str) -> TrackedOutput:
    """`dvc init` when needed, then `dvc add` the data (runs beside the GX gate and training); its hash tags
    every version. `dvc-push` sends it to the remote later, beside the merge, before any alias moves."""
    from flows.stores.versioning import ensure_repo, track

    with transient_faults(f"DVC repository {ws.root}"):
        return track(ws.root, target, first=ensure_repo(ws.root, remote, defer=True), push=False)


@task(name="dvc-push", task_run_name="dvc-push[{tracked.path.name}]", **TASK, **TOOL_RETRIES)
def dvc_push_task(ws: Workspace, tracked: TrackedOutput) -> TrackedOutput:
    from flows.stores.versioning import push_tracked

    with transient_faults(f"DVC repository {ws.root}"):
        return push_tracked(ws.root, tracked)


@task(name="open-tracking", **TASK, **TOOL_RETRIES)
def open_tracking_task(ws: Workspace, tracking_uri: str | None) -> Tracker:
    """Open the MLflow store (created and migrated on first use) while the sources train; registration's
    one-off imports go on in a thread of their own (Tracker.start_warm_up)."""
    from flows.stores.tracking import Tracker

    with transient_faults(f"MLflow store {tracking_uri or 'sqlite:///' + str(ws.root / 'mlflow.db')}"):
        tracker = Tracker(ws.root, tracking_uri=tracking_uri)
    tracker.start_warm_up()
    return tracker


@task(name="validate-data", **TASK)
def validate_task(root: Path, out_dir: Path, worker: GxWorker | None = None,
                  cfg: Config | None = None) -> ValidationReport:
    """The GX gate with params.yaml's `validation` knobs; `worker`: a prewarmed GX process
    (flows.stores.validation.prewarmed_gx) or None (in process)."""
    from flows.stores.validation import Expected, validate_dataset

    expected = Expected.from_config(cfg.validation) if cfg is not None else None
    return validate_dataset(root, out_dir, worker=worker, expected=expected)


@task(name="list-sources", **TASK)
def area_task(ws: Workspace, target: str, on_bad_source: str, progress: Progress,
              limits: LimitsConfig | None = None) -> tuple[list[AreaSource], list[BadSource]]:
    """Every source in checkpoints/sources (trained or added), fully checked against the base; refused
    files fail the run or, with `on_bad_source: skip`, are left out and returned for the lineage."""
    from flows.pipeline.sources import refuse_or_skip, scan_area

    area, bad = scan_area(ws, target, limits or LimitsConfig())
    refuse_or_skip(bad, on_bad_source)
    for b in bad:
        progress.say(f"skipped a refused source: {b.reason}")
    return area, bad


@task(name="plan-merge", **TASK, **TOOL_RETRIES)
def plan_task(tracker: Tracker, model_name: str, area: list[AreaSource], out_dir: Path, full: bool,
              params_sha256: str) -> MergePlan:
    """From scratch; incremental (the champion plus the sources its lineage lacks); or resume (the last
    version of an interrupted run plus what it had not merged)."""
    from flows.pipeline.plan import plan_merge

    with transient_faults(f"MLflow store {tracker.tracking_uri}"):
        return plan_merge(tracker, model_name, area, out_dir, full, params_sha256)


@task(name="build-base", **TASK)
def base_task(cfg: Config, ws: Workspace, classes: list[str], first_source: str, progress: Progress,
              compute: Compute) -> SavedCheckpoint:
    shape = input_shape(ws.data(cfg), first_source, classes)
    progress.stage("base")
    return ensure_base(cfg, ws, classes, shape, progress.epoch, compute)[0]


@task(name="train-source", task_run_name="train-source[{name}]", **TASK)
def source_task(cfg: Config, ws: Workspace, name: str, classes: list[str], base: SavedCheckpoint,
                seed: int, compute: Compute) -> tuple[SavedCheckpoint, bool]:
    """Train the source model of domain `name` from the base, or re-use it when its recipe is unchanged.

    No per-epoch progress: sources train in parallel (threads or Dask workers, flows/runtime/runners.py) and would
    interleave their lines. Runs in the `train-sources` subflow, whose task runner bounds the parallelism.
    Module-level state must stay out of this function: Dask pickles it by value.
    """
    from flows.runtime.runners import warn_on_slow_allocator

    warn_on_slow_allocator()
    return ensure_source(cfg, ws, name, classes, base, seed, None, compute)


@task(name="grasp-stage", task_run_name="grasp-stage[{stage}:{source_name}]", **TASK)
def grasp_stage_task(cfg: Config, ws: Workspace, target: str, classes: list[str], source: SavedCheckpoint,
                     source_name: str, stage: int, parent: StepArtifact | None, progress: Progress,
                     compute: Compute, held_by_start: bool = False) -> StepArtifact:
    """Stage 0 adopts the first source; later stages align, transfer and fine-tune (GRASP step 2); a source the
    mean start holds transfers per `transfer.after_mean` (grasp_core.start.merge_config)."""
    data = cached_target(ws.data(cfg), target, tuple(classes), cfg.data.target_train_frac, cfg.seed, compute)
    progress.stage(f"grasp stage {stage}")
    tests = cached_tests(ws.data(cfg), tuple(classes), compute)
    step = target_step(cfg, data, source, stage, parent, ws.targets(target), progress.epoch, tests, compute,
                       held_by_start)
    progress.step(step.computed)
    return step


@task(name="merge-chain", task_run_name="merge-chain[{target}]", **TASK)
def merge_chain_task(cfg: Config, ws: Workspace, target: str, classes: list[str],
                     sources: list[tuple[str, SavedCheckpoint]], start_stage: int,
                     parent: StepArtifact | None, compute: Compute,
                     held_by_start: frozenset[str] = frozenset()) -> list[StepArtifact]:
    """Every stage of one target's merge, in order, saved under checkpoints/targets/<target>/ (compute only:
    registration stays in the flow's process). Independent targets run as parallel tasks (threads or Dask)."""
    from flows.runtime.runners import warn_on_slow_allocator

    warn_on_slow_allocator()
    data = cached_target(ws.data(cfg), target, tuple(classes), cfg.data.target_train_frac, cfg.seed, compute)
    tests = cached_tests(ws.data(cfg), tuple(classes), compute)
    steps: list[StepArtifact] = []
    for stage, (_, checkpoint) in enumerate(sources, start=start_stage):
        parent = target_step(cfg, data, checkpoint, stage, parent, ws.targets(target), None, tests, compute,
                             checkpoint.sha256 in held_by_start)
        steps.append(parent)
    return steps


@task(name="run-baseline", task_run_name="run-baseline[{method}]", **TASK)
def baseline_task(method: str, ctx: MethodContext) -> MethodResult:
    return run_method(method, ctx)


@task(name="log-and-register", task_run_name="log-and-register[{step.result.stage}]", **TASK, **TOOL_RETRIES)
def register_task(tracker: Tracker, parent_run_id: str, model_name: str, step: StepArtifact, classes: list[str],
                  tags: dict[str, str], out_dir: Path, parent_version: str = "", data_v: TrackedOutput | None = None,
                  sources_v: TrackedOutput | None = None, extra_artifacts: dict[str, Path] | None = None) -> str:
    """Log the stage as a nested MLflow run, then register its checkpoint: registration comes last.

    Submitted as a future while the next stage trains: `parent_version` (the previous stage's
    registration) and the DVC outputs `data_v`, `sources_v` may be futures that Prefect resolves first.
    `extra_artifacts` (run folder -> file) are logged too, e.g. a mean start's source list that outgrew a tag.
    """
    from flows.reports.confusion_plot import confusion_png
    from flows.stores.dvc_audit import file_md5_in_dir
    from flows.stores.stage_runs import alignment_csv, dataset_input, epoch_history, step_metrics, version_description
    from flows.stores.versioning import output_path

    result = step.computed
    tags = {**tags, "parent_version": parent_version, "rejected": "true" if result.rejected else "false"}
    if data_v is not None:
        tags["dataset_dvc_md5"] = data_v.md5
    if sources_v is not None:
        tags["sources_dvc_md5"] = sources_v.md5
        tags["source_dvc_md5"] = file_md5_in_dir(tracker.workspace, sources_v.path,
                                                 f"{result.source_name}.safetensors") or ""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = {"confusion": confusion_png(result, classes, out_dir / f"confusion-stage{result.stage:02d}.png"),
                 **(extra_artifacts or {})}
    if result.scores:
        artifacts["alignment"] = alignment_csv(result, out_dir / f"alignment-stage{result.stage:02d}.csv")
    if data_v is not None and sources_v is not None:  # what `grasp restore` brings back (flows/ops/restore.py)
        from flows.stores.stage_runs import POINTERS, log_pointers

        artifacts[POINTERS] = log_pointers([data_v.path, sources_v.path], tracker.workspace,
                                           out_dir / f"dvc-stage{result.stage:02d}")
    run_name = f"stage{result.stage:02d}-{result.source_name}"
    metrics = {**step_metrics(result), **{f"domain/{d}/test_accuracy": a for d, a in step.domain_accuracy.items()}}
    inputs = [dataset_input(output_path(data_v.path), data_v.md5, data_v.path, tags.get("target_domain", ""))
              ] if data_v is not None else []
    with transient_faults(f"MLflow store {tracker.tracking_uri} (artifacts {tracker.artifact_root})"):
        run_id = tracker.step_run(run_name, metrics, {"stage": result.stage}, tags, artifacts=artifacts,
                                  parent_run_id=parent_run_id, history=epoch_history(result), inputs=inputs)
        return tracker.register(step.checkpoint.path, model_name, run_id, tags,
                                version_description(result, tags.get("target_domain", ""), parent_version))


@task(name="set-aliases", **TASK, **TOOL_RETRIES)
def alias_task(tracker: Tracker, model_name: str, version: str) -> list[str]:
    """The final version becomes `challenger`; with no champion yet it is `champion` too (compare-and-set: a
    champion promoted meanwhile is never overwritten). The run holds the workspace lock around both."""
    from flows.pipeline.promotion import compare_and_set_alias

    aliases = ["challenger"]
    with transient_faults(f"MLflow store {tracker.tracking_uri}"):
        tracker.set_alias(model_name, "challenger", version)
        if compare_and_set_alias(tracker, model_name, "champion", version, None):
            aliases.append("champion")
    return aliases


def method_metrics(result: MethodResult) -> dict[str, float]:
    """The figures the MLflow UI compares across methods (same keys for GRASP and every baseline)."""
    mem = result.memory
    return {"test/accuracy": result.test_accuracy, "val/accuracy": result.val_accuracy,
            "target/steps": result.target_steps, "memory/models_alive": mem.models_alive,
            "memory/peak_rss_bytes": mem.peak_rss_bytes, "memory/param_bytes_alive": mem.param_bytes_alive,
            "memory/param_sized_multiple": mem.param_sized_multiple, "time/method_s": result.wall_s}


@task(name="log-baseline", task_run_name="log-baseline[{result.method}]", **TASK, **TOOL_RETRIES)
def log_baseline_task(tracker: Tracker, result: MethodResult, params: dict[str, str],
                      tags: dict[str, str]) -> str:
    """A baseline is a top-level run of its own (tag `method`), next to GRASP's parent run."""
    with transient_faults(f"MLflow store {tracker.tracking_uri}"), tracker.parent_run(
            f"{result.method}-{tags['target_domain']}", params,
            {**tags, "method": result.method, **{f"detail.{k}": v for k, v in result.detail.items()}}) as run_id:
        tracker.log_metrics(run_id, method_metrics(result))
    return run_id


@task(name="report", **TASK)
def report_task(ws: Workspace, tracking_uri: str, model_name: str, version: str) -> str:
    """Accuracy and memory along the lineage of the new version, as a PNG logged to MLflow."""
    from flows.reports.lineage_plot import log_lineage_plot
    from flows.stores.registry import lineage

    rows = lineage(ws.root, tracking_uri, version, model_name)
    plot = path_inside(ws.root / "reports", model_name, "model name", "lineage-", ".png")
    return str(log_lineage_plot(ws.root, tracking_uri, rows, plot))


@task(name="promote", **TASK, **TOOL_RETRIES)
def promote_task(ws: Path, tracking_uri: str | None, cfg: Config) -> str:
    """The promotion gate on the new challenger, recorded as made by the scheduler."""
    from flows.pipeline.promotion import promote

    with transient_faults(f"MLflow store {tracking_uri or 'sqlite:///' + str(ws / 'mlflow.db')}"):
        return promote(ws, tracking_uri, cfg, "@challenger", auto=True).message


@task(name="run-report", **TASK)
def run_report_task(summary: FlowSummary, ws: Workspace, tracking_uri: str, threshold: float) -> str:
    """Self-contained HTML: accuracy along the stages vs baselines, alignment heatmap, memory per step."""
    from flows.reports.run_report import write_run_report

    return str(write_run_report(summary, ws.root, tracking_uri, threshold))
