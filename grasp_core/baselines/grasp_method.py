"""GRASP itself and its transfer-off control, as methods of the comparison."""

from __future__ import annotations

import dataclasses
import itertools

from torch import nn

from grasp_core.baselines.common import MethodContext, register_method
from grasp_core.grasp import run_grasp
from grasp_core.memory import MemoryTracker, peak_of
from grasp_core.order import alignment_prepass, order_sources


def merge_order(ctx: MethodContext) -> list[str]:
    """The sources in `transfer.order` (the "aligned" pre-pass streams them once, two models at most)."""
    order = ctx.cfg.transfer.order
    if order == "given":
        return list(ctx.source_names)
    batches = list(itertools.islice(iter(ctx.loaders.align), ctx.cfg.align.batches)) if order == "aligned" else []
    ctx.loaders.align.reset()  # the pre-pass must not shift the batches GRASP sees

    def prepass() -> dict[str, float]:
        return alignment_prepass(ctx.source_names, ctx.open_source, ctx.open_base, batches)

    return order_sources(ctx.source_names, ctx.target_name or ctx.cfg.data.target, order, prepass)


def _run(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    names = merge_order(ctx)
    ordered = dataclasses.replace(ctx, source_names=tuple(names))
    steps, last, best_val, rejected = 0, None, -1.0, []
    for last in run_grasp(ordered.sources(), ctx.loaders, ctx.cfg, tracker, ctx.on_epoch):
        steps += last.steps
        best_val = max(best_val, last.val_accuracy)
        if last.rejected:
            rejected.append(last.source_name)
        if ctx.on_step is not None:
            ctx.on_step(last)
        tracker.peak = peak_of(tracker.peak, last.memory)
    assert last is not None and last.target is not None
    val = best_val if ctx.cfg.transfer.keep_global_best else last.val_accuracy  # the restored stage's
    return last.target, val, steps, {"policy": ctx.cfg.transfer.policy, "order": ",".join(names),
                                     "rejected": ",".join(rejected)}


@register_method("grasp")
def grasp(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    """GRASP with the configured transfer policy."""
    return _run(ctx, tracker)


@register_method("transfer_off")
def transfer_off(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    """GRASP's exact schedule with the `none` policy: sequential fine-tuning, nothing copied."""
    cfg = dataclasses.replace(ctx.cfg, transfer=dataclasses.replace(ctx.cfg.transfer, policy="none"))
    return _run(dataclasses.replace(ctx, cfg=cfg), tracker)
