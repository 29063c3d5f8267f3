"""The core run without orchestration: data -> base -> sources -> GRASP and the baselines.

`grasp run --engine core` calls this; the Prefect flow calls the same workspace steps as tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flows.pipeline.workspace import (
    Workspace,
    ensure_base,
    ensure_source,
    layout_classes,
    load_target,
    materialise_data,
    resolve_roles,
    source_opener,
    source_seed,
)
from flows.reports.progress import Progress
from flows.runtime.execution import AUTO, Compute
from grasp_core.checkpoints import load_checkpoint, read_header
from grasp_core.config import Config
from grasp_core.data import input_shape, list_domains
from grasp_core.grasp import check_plugins, target_loaders
from grasp_core.memory import model_param_bytes, param_shapes_of, settle
from grasp_core.methods import MethodContext, MethodResult, run_method


@dataclass(frozen=True)
class RunSummary:
    target: str
    sources: tuple[str, ...]
    results: tuple[MethodResult, ...]
    sources_trained: int
    wall_s: float


def prepare_sources(cfg: Config, ws: Workspace, progress: Progress,
                    compute: Compute = AUTO) -> tuple[str, list[str], list[str], int]:
    """Materialise data and train the missing base/source models. Returns (target, sources, classes, trained)."""
    check_plugins(cfg)  # a misspelt policy or criterion fails here, before any data or model is written
    domains, generated = materialise_data(cfg, ws)
    if generated:
        progress.say(f"wrote the embedded benchmark: {len(domains)} domains under {ws.data(cfg)}")
    classes = layout_classes(cfg, ws)
    target, sources = resolve_roles(cfg, domains)
    progress.say(f"target {target}; sources {', '.join(sources)}")
    progress.stage("base")
    base, trained = ensure_base(cfg, ws, classes, input_shape(ws.data(cfg), sources[0], classes),
                                 progress.epoch, compute)
    count = int(trained)
    for name in sources:
        progress.stage(f"source {name}")
        _, trained = ensure_source(cfg, ws, name, classes, base,
                                   source_seed(cfg, domains, name), progress.epoch, compute)
        count += int(trained)
    progress.say(f"sources ready ({count} model(s) trained, {len(sources) + 1 - count} re-used)")
    return target, sources, classes, count


def method_context(cfg: Config, ws: Workspace, target: str, sources: list[str], classes: list[str],
                   progress: Progress, compute: Compute = AUTO) -> MethodContext:
    """What every method needs for `target`: its loaders, the sources (opened one at a time) and the base."""
    header = read_header(ws.base)
    base = load_checkpoint(ws.base)[0]
    base_bytes, shapes = model_param_bytes(base), param_shapes_of(base)
    del base
    return MethodContext(cfg=cfg, loaders=target_loaders(load_target(cfg, ws, target, classes, compute), cfg),
                         source_names=tuple(sources), open_source=source_opener(ws, header, compute),
                         open_base=lambda: load_checkpoint(ws.base, like=header, device=compute.torch_device())[0],
                         model_param_bytes=base_bytes,
                         param_shapes=shapes,
                         on_epoch=progress.epoch, on_step=progress.step, target_name=target,
                         domains=tuple(list_domains(ws.data(cfg))))  # the data's time order (`_domains.txt`)


def core_run(cfg: Config, ws: Workspace, progress: Progress, methods: list[str] | None = None,
             compute: Compute = AUTO) -> RunSummary:
    """Run GRASP and the configured baselines on the target; return one result per method."""
    t0 = time.perf_counter()
    target, sources, classes, trained = prepare_sources(cfg, ws, progress, compute)
    ctx = method_context(cfg, ws, target, sources, classes, progress, compute)
    settle()  # no model alive: later live-tensor scans only look at what is created from here on
    results = []
    for name in methods if methods is not None else ["grasp", *cfg.baselines.methods]:
        progress.stage(f"{name}" if name != "grasp" else "grasp stage 0")
        progress.say(f"method {name} ...")
        with compute.autocast():
            results.append(run_method(name, ctx))
    return RunSummary(target=target, sources=tuple(sources), results=tuple(results), sources_trained=trained,
                      wall_s=time.perf_counter() - t0)
