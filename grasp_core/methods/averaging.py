"""O(1) competitors that average the sources' weights, one source alive at a time, then the target budget.

- `fusion`: the honest fusion. The official code's "fusion" averages the logits of K models trained
  jointly (O(K)); a streaming weight average needs two models at a time, like GRASP. It averages every
  float entry of the state dict, BatchNorm statistics included.
- `weight_averaging`: FusionBench's `ContinualWeightAverageForCLIP`, the running mean over the models'
  *parameters* only, starting from the first model; buffers stay the first model's.
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, register_merge


def _averaged(model: nn.Module, with_buffers: bool) -> dict[str, torch.Tensor]:
    """The tensors an average updates in place: float state entries, or the parameters only."""
    if with_buffers:
        return {name: value for name, value in model.state_dict().items() if value.is_floating_point()}
    return dict(model.named_parameters())


@torch.no_grad()
def running_mean(ctx: MethodContext, tracker: MemoryTracker, with_buffers: bool) -> nn.Module:
    """mean_k <- mean_{k-1} + (theta_k - mean_{k-1}) / k over the sources, two models alive at most."""
    stream = ctx.sources()
    _, mean = next(stream)
    mean_tensors = _averaged(mean, with_buffers)
    for k, (_, source) in enumerate(stream, start=2):
        source_tensors = _averaged(source, with_buffers)
        for name, value in mean_tensors.items():
            value.add_((source_tensors[name] - value) / k)
        tracker.sample()
        del source, source_tensors
    return mean


@register_merge("fusion")
def fusion_mean(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Running mean of weights and float buffers."""
    return running_mean(ctx, tracker, with_buffers=True)


@register_merge("weight_averaging")
def continual_weight_average(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Running mean of the sources' parameters (FusionBench); buffers stay the first source's."""
    return running_mean(ctx, tracker, with_buffers=False)
