"""`grasp bench cost`: where a merge step's wall time goes, tracking and registry included.

Each stage runs exactly as the pipeline runs it: `flows.pipeline.stage.target_step` (load checkpoints, align,
transfer, fine-tune, evaluate, save) and then `flows.pipeline.tasks.register_task`'s own function (confusion PNG,
alignment CSV, nested MLflow run with artifacts, registered version), against a temporary SQLite MLflow.
The core's `StepResult.timings_s` gives align/transfer/finetune/evaluate; a timing proxy around the
`Tracker` splits the tracking time into the nested run and the registration.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from flows.pipeline.stage import StepArtifact
    from flows.pipeline.workspace import Workspace
    from flows.runtime.options import Subcommands
    from flows.stores.tracking import Tracker
    from grasp_core.checkpoints import SavedCheckpoint
    from grasp_core.config import Config

SPLITS = ("align_s", "transfer_s", "finetune_s", "evaluate_s", "io_s", "artifacts_s", "mlflow_run_s", "register_s")
TABLE = ("stage", "source", *SPLITS, "tracking_s", "step_s", "tracking_pct")


class TimedTracker:
    """Delegates to a `flows.stores.tracking.Tracker`, adding up the seconds spent in `step_run` and `register`."""

    TIMED = ("step_run", "register")

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.seconds = dict.fromkeys(self.TIMED, 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.TIMED, 0.0)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.tracker, name)
        if name not in self.TIMED:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return timed


def cost_config(params: Path | None) -> Config:
    """params.yaml as the pipeline would run it; only the one-off setup (base, sources) is cut to 1 epoch."""
    from grasp_core.config import Config, load_config, replace

    cfg = load_config(params) if params is not None and params.is_file() else Config()
    return replace(cfg, base__epochs=min(cfg.base.epochs, 1), sources__epochs=min(cfg.sources.epochs, 1))


def stage_row(step: StepArtifact, version: str, step_wall_s: float, tracking_wall_s: float,
              timed: TimedTracker) -> dict[str, Any]:
    """One stage's split. `io_s` is the rest of `target_step` (checkpoint load and save, loaders) and
    `artifacts_s` the rest of `register_task` (confusion PNG, alignment CSV), so the splits add up to `step_s`."""
    r = step.result
    assert r is not None  # a stage this bench computed, never a parent loaded from the registry
    core = {f"{key}_s": seconds for key, seconds in r.timings_s.items()}
    run_s, register_s = timed.seconds["step_run"], timed.seconds["register"]
    split = {**core, "io_s": step_wall_s - sum(core.values()),
             "artifacts_s": tracking_wall_s - run_s - register_s, "mlflow_run_s": run_s, "register_s": register_s}
    total = step_wall_s + tracking_wall_s
    return {"stage": r.stage, "source": r.source_name, "version": version,
            **{key: round(split[key], 3) for key in SPLITS}, "tracking_s": round(tracking_wall_s, 3),
            "step_s": round(total, 3), "tracking_pct": round(100 * tracking_wall_s / total, 1)}


def _setup(cfg: Config, root: Path, say: Callable[[str], None]) -> tuple[Workspace, str, list[str], list[str]]:
    """Workspace with data, base and trained sources; returns (workspace, target, sources, classes)."""
    import yaml

    from flows.pipeline.core_run import prepare_sources
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress

    ws = Workspace(root)
    (root / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    say(f"preparing data and sources under {root} ...")
    target, sources, classes, _ = prepare_sources(cfg, ws, Progress(quiet=True))
    return ws, target, sources, classes


def _source_checkpoint(ws: Workspace, name: str) -> SavedCheckpoint:
    from grasp_core.checkpoints import SavedCheckpoint, file_sha256, read_header

    path = ws.source(name)
    return SavedCheckpoint(path, file_sha256(path), read_header(path))


def _stages(cfg: Config, ws: Workspace, target: str, sources: list[str], classes: list[str], timed: TimedTracker,
            parent_run_id: str, say: Callable[[str], None],
            ) -> tuple[list[dict[str, Any]], list[StepArtifact], list[str]]:
    """Every source merged in order, each step timed as target_step + register_task: (rows, steps, versions)."""
    from flows.pipeline.stage import target_step
    from flows.pipeline.tasks import register_task
    from flows.pipeline.workspace import load_target
    from grasp_core.memory import settle

    data = load_target(cfg, ws, target, classes)  # decoded once per process, as the pipeline's cached_target
    settle()  # as the pipeline does before its stages: live-tensor scans then skip Prefect's and MLflow's objects
    out_dir, reports = ws.targets(target), ws.root / "reports" / parent_run_id
    rows: list[dict[str, Any]] = []
    steps: list[StepArtifact] = []
    versions: list[str] = []
    parent: StepArtifact | None = None
    for stage, name in enumerate(sources):
        t0 = time.perf_counter()
        step = target_step(cfg, data, _source_checkpoint(ws, name), stage, parent, out_dir)
        t1 = time.perf_counter()
        timed.reset()
        tags = {"stage": str(stage), "source_domain": name, "checkpoint_sha256": step.checkpoint.sha256}
        tracker = cast("Tracker", timed)  # delegates every call; times step_run and register
        version = register_task.fn(tracker, parent_run_id, f"grasp-{target}", step, classes, tags, reports,
                                   versions[-1] if versions else "")
        rows.append(stage_row(step, version, t1 - t0, time.perf_counter() - t1, timed))
        say(f"stage {stage} [{name}]: {rows[-1]['step_s']}s, tracking {rows[-1]['tracking_pct']}%")
        steps.append(step)
        versions.append(version)
        parent = step
    return rows, steps, versions


def cost_bench(params: Path | None, say: Callable[[str], None] = print, keep: bool = False) -> dict[str, Any]:
    """Run every stage of params.yaml's config in a temporary workspace.

    Returns:
        {"info", "rows", "steps", "versions"}: rows are the JSON table; steps (`StepArtifact`s) and versions
        are the registered stages, usable while the workspace `info["workspace"]` exists (`keep`).
    """
    from flows.runtime.settings import apply_defaults

    root = Path(tempfile.mkdtemp(prefix="grasp-bench-cost-"))
    apply_defaults(root)  # before prefect (flows.pipeline.tasks) and mlflow are imported
    try:
        cfg = cost_config(params)
        t0 = time.perf_counter()
        ws, target, sources, classes = _setup(cfg, root, say)
        t1 = time.perf_counter()
        from flows.stores.tracking import Tracker

        timed = TimedTracker(Tracker(root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
        t2 = time.perf_counter()
        with timed.tracker.parent_run(f"bench-cost-{target}", {}, {"bench": "cost"}) as parent_run_id:
            t3 = time.perf_counter()
            rows, steps, versions = _stages(cfg, ws, target, sources, classes, timed, parent_run_id, say)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    info = {"target": target, "sources": sources, "arch": cfg.model.arch, "setup_s": round(t1 - t0, 1),
            "tracker_init_s": round(t2 - t1, 2), "parent_run_s": round(t3 - t2, 2),
            "epochs": [cfg.finetune.initial_epochs, cfg.finetune.epochs], "workspace": str(root),
            "tracking_uri": timed.tracker.tracking_uri, "parent_run_id": parent_run_id, "model_name": f"grasp-{target}"}
    return {"info": info, "rows": rows, "steps": steps, "versions": versions}


def total_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Column sums over the stages, with the tracking share of the total."""
    sums = {key: round(sum(r[key] for r in rows), 3) for key in (*SPLITS, "tracking_s", "step_s")}
    return {"stage": "all", "source": "", **sums, "tracking_pct": round(100 * sums["tracking_s"] / sums["step_s"], 1)}


def format_cost(bench: dict[str, Any]) -> str:
    """The header line, one row per stage plus the totals, and what each column means."""
    from flows.reports.tables import format_rows

    info, rows = bench["info"], bench["rows"]
    head = (f"target {info['target']}; sources {', '.join(info['sources'])}; model {info['arch']}; fine-tune epochs "
            f"{info['epochs'][0]} then {info['epochs'][1]} per stage (params.yaml; setup trained base and sources "
            f"for 1 epoch in {info['setup_s']}s, which changes no step's cost); MLflow on a temporary SQLite file: "
            f"Tracker init {info['tracker_init_s']}s, parent run {info['parent_run_s']}s (once per run)")
    legend = ("io_s: checkpoint load/save and loaders (rest of target_step); artifacts_s: confusion PNG and alignment "
              "CSV (rest of register_task); mlflow_run_s: nested run, metrics, artifacts; register_s: pyfunc model "
              "and registered version (the first one in a process also pays MLflow's ~2.5 s package scan)")
    return "\n".join([head, "", format_rows([*rows, total_row(rows)], TABLE), "", legend])


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench cost` to the `grasp bench` sub-parsers."""
    from flows.runtime.options import bench_output_args

    cmd = bench_sub.add_parser(
        "cost", parents=[bench_output_args()],
        help="per merge step: align, transfer, fine-tune, evaluate, checkpoint IO, tracking and registry",
        description="Merge every source of params.yaml's config in a temporary workspace exactly as the pipeline "
        "does (flows.pipeline.stage.target_step, then flows.pipeline.tasks.register_task against a temporary "
        "SQLite MLflow) and "
        "print, per stage, the wall time split into alignment, transfer, fine-tuning, evaluation, checkpoint IO, "
        "artifacts, the nested MLflow run and the registration.")
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="params.yaml to run (defaults if missing); base and sources are trained 1 epoch")
    cmd.set_defaults(handler=cmd_bench_cost)


def cmd_bench_cost(args: argparse.Namespace) -> int:
    from flows.reports.progress import Progress
    from flows.reports.tables import write_json

    bench = cost_bench(args.params, Progress(args.quiet).say)
    print(format_cost(bench))
    if args.json:
        write_json(bench["rows"], args.json)
        print(f"wrote {args.json}")
    return 0
