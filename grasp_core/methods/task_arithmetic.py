"""O(1) competitor: continual task arithmetic (FusionBench `ContinualTaskArithmeticForCLIP`), then the budget.

theta = theta_base + lambda * sum_k (theta_k - theta_base) over parameters, lambda =
`baselines.task_arithmetic_scale` (FusionBench's default 0.3). The sum of task vectors is kept as one
running parameter-sized tensor set; the base model and one source are the only models alive. Buffers
stay the base's, as in FusionBench (it merges `named_parameters()` only).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, register_merge

TaskVector = dict[str, torch.Tensor]  # param_name -> theta_source - theta_base


@torch.no_grad()
def task_vectors(ctx: MethodContext, base: nn.Module, tracker: MemoryTracker) -> Iterator[TaskVector]:
    """Each source's task vector against `base`, one source loaded at a time (dropped before the yield)."""
    base_params = dict(base.named_parameters())
    for _, source in ctx.sources():
        vector = {name: p - base_params[name] for name, p in source.named_parameters()}
        tracker.sample()
        del source
        yield vector


@torch.no_grad()
def add_scaled(base: nn.Module, vector: TaskVector, scale: float) -> nn.Module:
    """theta_base + scale * vector, in place on `base`."""
    for name, p in base.named_parameters():
        p.add_(scale * vector[name])
    return base


@register_merge("task_arithmetic", lambda cfg: {"scale": str(cfg.baselines.task_arithmetic_scale)})
@torch.no_grad()
def continual_task_arithmetic(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    base = ctx.open_base()
    total: TaskVector = {name: torch.zeros_like(p) for name, p in base.named_parameters()}
    for vector in task_vectors(ctx, base, tracker):
        for name, value in vector.items():
            total[name].add_(value)
    return add_scaled(base, total, ctx.cfg.baselines.task_arithmetic_scale)

