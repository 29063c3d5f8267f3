"""What every method shares: its inputs, its result, the registry and the target budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from grasp_core.config import Config
from grasp_core.finetune import EpochCallback, evaluate, train_epochs
from grasp_core.grasp import StepResult, TargetLoaders
from grasp_core.memory import MemorySample, MemoryTracker
from grasp_core.registry import lookup, registrar


@dataclass(frozen=True)
class MethodContext:
    """Inputs of a method. Sources are opened by name, one at a time, through `open_source`."""

    cfg: Config
    loaders: TargetLoaders
    source_names: tuple[str, ...]  # ordered as GRASP merges them
    open_source: Callable[[str], nn.Module]
    open_base: Callable[[], nn.Module]
    model_param_bytes: int  # one model's parameter bytes: the unit of "models alive"
    param_shapes: frozenset[tuple[int, ...]]  # what counts as a parameter-sized tensor
    on_epoch: EpochCallback | None = None
    on_step: Callable[[StepResult], None] | None = None  # called after every GRASP stage
    target_name: str = ""  # the target domain ("" = `data.target`); `transfer.order: nearest` measures from it
    domains: tuple[str, ...] = ()  # every domain of the data, oldest first (its domain list): the time "nearest" reads

    def sources(self) -> Iterator[tuple[str, nn.Module]]:
        """Lazy stream: a source is loaded only when the consumer asks for it."""
        for name in self.source_names:
            yield name, self.open_source(name)


class MethodOutput(NamedTuple):
    """What a method hands back to `run_method`, which evaluates the model on test and measures the run."""

    model: nn.Module  # the method's final target model
    val_accuracy: float  # its validation accuracy, as the method selected it
    target_steps: int  # optimizer steps on target data: equal for every method that trains
    detail: dict[str, str]  # the method's own facts (chosen source, knobs, order), logged as they are


@dataclass(frozen=True)
class MethodResult:
    """One method's measured run: what the comparison tables and the MLflow runs report."""

    method: str
    test_accuracy: float
    val_accuracy: float
    target_steps: int  # optimizer steps on target data: equal for every method that trains
    memory: MemorySample  # peak over the whole method
    wall_s: float
    detail: dict[str, str] = field(default_factory=dict)


Method = Callable[[MethodContext, MemoryTracker], MethodOutput]
Merge = Callable[[MethodContext, MemoryTracker], nn.Module]  # a streaming merge of the sources
METHODS: dict[str, Method] = {}


register_method = registrar(METHODS, "method")


def register_merge(name: str, detail: Callable[[Config], dict[str, str]] | None = None) -> Callable[[Merge], Merge]:
    """Register a streaming merge as the method `name`: merge the sources, then spend the target budget.

    Args:
        detail: the merge's own knobs, recorded with its result (e.g. its scale).
    """

    def decorate(merge: Merge) -> Merge:
        def method(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
            model = merge(ctx, tracker)
            val_acc, steps = finetune_budget(model, ctx, tracker)
            return MethodOutput(model, val_acc, steps, detail(ctx.cfg) if detail else {})

        method.__doc__ = merge.__doc__
        register_method(name)(method)
        return merge

    return decorate


def get_method(name: str) -> Method:
    return lookup(METHODS, name, "baselines.methods")


def stage_epochs(cfg: Config, k: int) -> list[int]:
    """GRASP's target schedule for K sources: the budget every training method gets (`finetune.schedule:
    final`: the same epochs as one stage)."""
    epochs = [cfg.finetune.initial_epochs] + [cfg.finetune.epochs] * (k - 1)
    return [sum(epochs)] if cfg.finetune.schedule == "final" else epochs


def finetune_budget(model: nn.Module, ctx: MethodContext, tracker: MemoryTracker) -> tuple[float, int]:
    """Fine-tune with GRASP's exact stage schedule; returns (best val accuracy, optimizer steps)."""
    val_acc, steps = 0.0, 0
    for epochs in stage_epochs(ctx.cfg, len(ctx.source_names)):
        stage = train_epochs(model, ctx.loaders.train, ctx.loaders.val, epochs, ctx.cfg.finetune.lr,
                             ctx.cfg.finetune.weight_decay, tracker, ctx.on_epoch)
        val_acc, steps = stage.best_val_accuracy, steps + stage.steps
    return val_acc, steps


def run_method(name: str, ctx: MethodContext) -> MethodResult:
    """Run one registered method and measure it."""
    method = get_method(name)
    ctx.loaders.train.reset()
    ctx.loaders.align.reset()
    tracker = MemoryTracker(ctx.model_param_bytes, ctx.param_shapes)
    t0 = time.perf_counter()
    model, val_acc, steps, detail = method(ctx, tracker)
    test = evaluate(model, ctx.loaders.test, ctx.loaders.num_classes)
    tracker.sample()
    del model
    return MethodResult(method=name, test_accuracy=test.accuracy, val_accuracy=val_acc, target_steps=steps,
                        memory=tracker.peak, wall_s=time.perf_counter() - t0, detail=detail)
