"""O(1) competitor: continual task arithmetic (FusionBench `ContinualTaskArithmeticForCLIP`), then the budget.

theta = theta_base + lambda * sum_k (theta_k - theta_base) over parameters, lambda =
`baselines.task_arithmetic_scale` (FusionBench's default 0.3). The sum of task vectors is kept as one
running parameter-sized tensor set; the base model and one source are the only models alive. Buffers
stay the base's, as in FusionBench (it merges `named_parameters()` only).
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, register_merge
from grasp_core.methods.task_vectors import TaskVector, add_scaled, merge_task_vectors


class TaskVectorSum:
    """The running sum of the task vectors; applied as theta_base + scale * sum."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.total: TaskVector = {}

    @torch.no_grad()
    def add(self, vector: TaskVector) -> None:
        for name, value in vector.items():
            self.total.setdefault(name, torch.zeros_like(value)).add_(value)

    @torch.no_grad()
    def apply(self, base: nn.Module) -> nn.Module:
        total = self.total or {name: torch.zeros_like(p) for name, p in base.named_parameters()}  # no source
        return add_scaled(base, total, self.scale)


@register_merge("task_arithmetic", lambda cfg: {"scale": str(cfg.baselines.task_arithmetic_scale)})
def continual_task_arithmetic(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Base + scale x the sum of the task vectors (FusionBench's continual task arithmetic)."""
    return merge_task_vectors(ctx, tracker, TaskVectorSum(ctx.cfg.baselines.task_arithmetic_scale))

