"""Baseline: soft-voting ensemble of the K sources, zero-shot (K models alive, no target training).

Soft voting averages raw logits with equal weights, as the official code's default does.
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.finetune import predict_logits
from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, MethodOutput, register_method


class SoftVote(nn.Module):
    """Mean of the members' logits."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


@register_method("ensemble")
def ensemble(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    model = SoftVote([source for _, source in ctx.sources()])
    tracker.sample()
    val_acc = float((predict_logits(model, ctx.loaders.val).argmax(1) == ctx.loaders.val.y).float().mean())
    return MethodOutput(model, val_acc, 0, {"members": str(len(ctx.source_names))})
