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


@dataclass
class FlowSummary:
    target: str
    sources: list[str]
    model_name: str
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    steps: list[StepArtifact] = field(default_factory=list)
    parent_run_id: str = ""
    data_md5: str = ""
    sources_trained: int = 0
    methods: list[dict] = field(default_factory=list)  # baseline rows when --baselines


@flow(name="grasp-run", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def grasp_run_flow(params_path: str, workdir: str = ".", tracking_uri: str | None = None,
                   dvc_remote: str | None = None, baselines: bool = False, quiet: bool = False,
                   verbose: bool = False) -> FlowSummary:
    """Validate, version, train the missing sources, merge them one at a time and register each step."""
    from prefect.runtime import flow_run

    from flows.tracking import Tracker

    ws, progress = Workspace(Path(workdir)), Progress(quiet, verbose)
    cfg = load_config(Path(params_path))
    target, sources, classes = tasks.materialise_task(cfg, ws, progress)
    tasks.dvc_init_task(ws, dvc_remote)
    data_v = tasks.dvc_track_task(ws, cfg.data.root)
    tasks.validate_task(ws.data(cfg), ws.root / "reports" / "validation")
    progress.say(f"data valid; target {target}; sources {', '.join(sources)}")
    base = tasks.base_task(cfg, ws, classes, sources[0], progress)
    futures = [tasks.source_task.submit(cfg, ws, name, classes, base, cfg.seed + 1 + i, progress)
               for i, name in enumerate(sources)]
    trained = [f.result() for f in futures]
    src_v = tasks.dvc_track_task(ws, "checkpoints/sources")
    summary = FlowSummary(target, sources, f"grasp-{target}", data_md5=data_v.md5,
                          sources_trained=sum(t for _, t in trained))
    progress.say(f"sources ready ({summary.sources_trained} trained, {len(sources) - summary.sources_trained} re-used)")
    tracker = Tracker(ws.root, tracking_uri=tracking_uri)
    run_tags = {"dataset_dvc_md5": data_v.md5, "sources_dvc_md5": src_v.md5, "params_sha256": config_hash(cfg),
                "code_commit": code_commit(), "flow_run_id": str(flow_run.id), "policy": cfg.transfer.policy,
                "target_domain": target, "method": "grasp"}
    with tracker.parent_run(f"grasp-{target}", flatten(cfg), run_tags, params_file=Path(params_path)) as parent_id:
        summary.parent_run_id = parent_id
        _merge_all(cfg, ws, summary, classes, [c for c, _ in trained], src_v.path, tracker, run_tags, progress)
        summary.aliases = tasks.alias_task(tracker, summary.model_name, summary.versions[-1])
    return summary


def _merge_all(cfg, ws, summary, classes, checkpoints, sources_dvc, tracker, run_tags, progress) -> None:  # type: ignore[no-untyped-def]
    """The sequential part: one stage per source, each registered before the next starts."""
    from flows.versioning import file_md5_in_dir

    parent: StepArtifact | None = None
    for stage, (name, ckpt) in enumerate(zip(summary.sources, checkpoints, strict=True)):
        step = tasks.grasp_stage_task(cfg, ws, summary.target, classes, ckpt, name, stage, parent, progress)
        tags = {**run_tags, "stage": str(stage), "source_domain": name, "source_sha256": ckpt.sha256,
                "source_dvc_md5": file_md5_in_dir(ws.root, sources_dvc, f"{name}.safetensors") or "",
                "base_sha256": ckpt.header.extra.get("base_sha256", ""),
                "checkpoint_sha256": step.checkpoint.sha256, "chain_sha256": step.chain_sha256,
                "parent_version": summary.versions[-1] if summary.versions else ""}
        version = tasks.register_task(tracker, summary.parent_run_id, summary.model_name, step, classes, tags,
                                      ws.root / "reports" / summary.parent_run_id)
        summary.versions.append(version)
        summary.steps.append(step)
        parent = step


def run_pipeline(params: Path, workdir: Path, baselines: bool = False, tracking_uri: str | None = None,
                 dvc_remote: str | None = None, quiet: bool = False, verbose: bool = False) -> FlowSummary:
    """Run the flow (on Prefect's ephemeral API unless PREFECT_API_URL is set)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # A synchronous flow otherwise waits up to 1 s for its heartbeat thread to join.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return grasp_run_flow(params_path=str(params), workdir=str(workdir), tracking_uri=tracking_uri,
                              dvc_remote=dvc_remote, baselines=baselines, quiet=quiet, verbose=verbose)
