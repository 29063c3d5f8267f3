"""Baseline: fusion as a parameter running mean of the sources (O(1) models), then fine-tuning.

This is the honest fusion: the official code's "fusion" averages the logits of K models trained
jointly (O(K)); a streaming weight average needs two models at a time, like GRASP.
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.baselines.common import MethodContext, finetune_budget, register_method
from grasp_core.memory import MemoryTracker


@torch.no_grad()
def running_mean(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """mean_k <- mean_{k-1} + (theta_k - mean_{k-1}) / k over weights and float buffers."""
    stream = ctx.sources()
    _, mean = next(stream)
    for k, (_, source) in enumerate(stream, start=2):
        mean_state, source_state = mean.state_dict(), source.state_dict()
        for name, value in mean_state.items():
            if value.is_floating_point():
                value.add_((source_state[name] - value) / k)
        tracker.sample()
        del source, source_state
    return mean


@register_method("fusion")
def fusion(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    model = running_mean(ctx, tracker)
    val_acc, steps = finetune_budget(model, ctx, tracker)
    return model, val_acc, steps, {}
