"""O(1) competitor: continual weight averaging as FusionBench implements it, then the target budget.

FusionBench's `ContinualWeightAverageForCLIP` keeps the running mean theta_t = (t * theta_{t-1} + theta_t)
/ (t + 1) over the models' *parameters*, starting from the first model; buffers stay the first model's.
That is our `fusion` except for buffers (`fusion` averages float buffers too, BatchNorm statistics included).
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.baselines.common import MethodContext, finetune_budget, register_method
from grasp_core.memory import MemoryTracker


@torch.no_grad()
def continual_weight_average(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Running mean of the sources' parameters, one source alive at a time (two models at most)."""
    stream = ctx.sources()
    _, merged = next(stream)
    merged_params = dict(merged.named_parameters())
    for t, (_, source) in enumerate(stream, start=1):
        for name, p in source.named_parameters():
            merged_params[name].mul_(t).add_(p).div_(t + 1)
        tracker.sample()
        del source
    return merged


@register_method("weight_averaging")
def weight_averaging(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    model = continual_weight_average(ctx, tracker)
    val_acc, steps = finetune_budget(model, ctx, tracker)
    return model, val_acc, steps, {}
