"""The fan-outs of a run: source training over every domain, and the merge chains of independent targets,
on local threads or Dask (flows/runtime/runners.py). Each is a small flow whose task runner is the runner."""

from __future__ import annotations

from prefect import flow

from flows.pipeline import tasks
from flows.pipeline.stage import StepArtifact
from flows.pipeline.summary import Prepared
from flows.pipeline.workspace import Workspace
from flows.runtime.execution import AUTO, Compute
from grasp_core.checkpoints import SavedCheckpoint
from grasp_core.config import Config


@flow(name="merge-targets", log_prints=False)
def merge_targets_flow(jobs: list[dict[str, object]]) -> list[list[StepArtifact]]:
    """The fan-out of independent targets: one `merge-chain` task per target on this flow's task runner; each job
    holds the keyword arguments of one `merge_chain_task` (see merge_targets)."""
    futures = [tasks.merge_chain_task.submit(**job) for job in jobs]  # type: ignore[call-overload]  # kwargs
    return [f.result() for f in futures]


def merge_targets(preps: list[Prepared], runner: str) -> dict[str, list[StepArtifact]]:
    """Compute the merge chains of several targets at once on `runner` (threads or Dask); target -> stages.

    Each chain is sequential; chains of different targets are independent and run at once on Dask (one per
    worker process). On local threads they run one after another: the memory figures (live models in the
    process) would otherwise count another target's models. Registration stays in the flow's process
    (_finish), one target after another.
    """
    from flows.runtime.runners import fanout_environment, parse_runner, task_runner
    jobs: list[dict[str, object]] = [{"cfg": p.cfg, "ws": p.ws, "target": p.summary.target, "classes": p.classes,
             "sources": [(s.domain, s.checkpoint) for s in p.plan.to_merge],
             "start_stage": p.plan.start_stage, "parent": p.plan.parent, "compute": p.compute,
             "held_by_start": p.plan.held_by_start}
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
    return {str(job["target"]): chain for job, chain in zip(jobs, chains, strict=True)}


@flow(name="train-sources", log_prints=False)
def train_sources_flow(cfg: Config, ws: Workspace, names: list[str], classes: list[str], base: SavedCheckpoint,
                       seeds: list[int], compute: Compute) -> list[tuple[SavedCheckpoint, bool]]:
    """The fan-out: one `train-source` task per domain on this flow's task runner (threads or Dask)."""
    futures = [tasks.source_task.submit(cfg, ws, name, classes, base, seed, compute)
               for name, seed in zip(names, seeds, strict=True)]
    return [f.result() for f in futures]


def train_sources(cfg: Config, ws: Workspace, names: list[str], domains: list[str], classes: list[str],
                  base: SavedCheckpoint, runner: str = "local",
                  compute: Compute = AUTO) -> list[tuple[SavedCheckpoint, bool]]:
    """Train (or re-use) the source model of every domain in `names`, fanned out on `runner`.

    Returns [(SavedCheckpoint, trained_now)] in `names` order. A source's seed is fixed by its domain's
    place among all `domains` (flows.pipeline.workspace.source_seed), as in the core run.
    """
    from flows.pipeline.workspace import source_seed
    from flows.runtime.runners import fanout_environment, parse_runner, task_runner

    spec = parse_runner(runner)
    seeds = [source_seed(cfg, domains, name) for name in names]
    with fanout_environment(spec):
        return train_sources_flow.with_options(task_runner=task_runner(spec))(cfg, ws, names, classes, base, seeds,
                                                                                   compute)
