"""GRASP itself and its transfer-off control, as methods of the comparison."""

from __future__ import annotations

import dataclasses

from torch import nn

from grasp_core.baselines.common import MethodContext, register_method
from grasp_core.grasp import run_grasp
from grasp_core.memory import MemoryTracker, peak_of


def _run(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    steps, last = 0, None
    for last in run_grasp(ctx.sources(), ctx.loaders, ctx.cfg, tracker, ctx.on_epoch):
        steps += last.steps
        if ctx.on_step is not None:
            ctx.on_step(last)
        tracker.peak = peak_of(tracker.peak, last.memory)
    assert last is not None and last.target is not None
    return last.target, last.val_accuracy, steps, {"policy": ctx.cfg.transfer.policy}


@register_method("grasp")
def grasp(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    """GRASP with the configured transfer policy."""
    return _run(ctx, tracker)


@register_method("transfer_off")
def transfer_off(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    """GRASP's exact schedule with the `none` policy: sequential fine-tuning, nothing copied."""
    cfg = dataclasses.replace(ctx.cfg, transfer=dataclasses.replace(ctx.cfg.transfer, policy="none"))
    return _run(dataclasses.replace(ctx, cfg=cfg), tracker)
