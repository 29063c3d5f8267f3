"""O(1) competitor: continual TIES-merging as FusionBench's `ContinualTiesMergingForCLIP` does it, then the budget.

FusionBench streams the task vectors tau_k = theta_k - theta_base and keeps only the merged task
vector M (merged model minus base):
- first source: M = lambda * tau_1 (no trimming);
- each next source: M <- M + lambda * TIES([M, tau_k]), where TIES keeps the top `baselines.ties_keep_frac`
  of each of the two flattened vectors by magnitude (trim), elects per coordinate the sign of their
  sum (a zero sum takes the majority sign), and sums the entries that agree with it ("sum" merge);
- the model is theta_base + M.
lambda = `baselines.ties_scale` (FusionBench: 0.5), keep 20 % (FusionBench: threshold 20). Exact TIES
needs every task vector at once; this two-vector recursion is FusionBench's own O(1) approximation, and we
follow it rather than invent another. Alive: the base, one source, and M (one parameter-sized set).
Deviation: FusionBench flattens the whole state dict (buffers included) for the top-k pool but merges
only parameters; we flatten parameters only. Buffers stay the base's.
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, register_merge
from grasp_core.methods.task_vectors import TaskVector, add_scaled, merge_task_vectors


def trim_top(vectors: torch.Tensor, keep_frac: float) -> torch.Tensor:
    """Zero all but the `keep_frac` largest-magnitude entries of each row of (n, d) `vectors` (ties kept)."""
    d = vectors.shape[1]
    k = d - int(d * keep_frac)  # the kth smallest magnitude is the cut, as in the TIES reference code
    if k < 1:
        return vectors.clone()
    cut, _ = vectors.abs().kthvalue(k, dim=1, keepdim=True)
    return vectors * (vectors.abs() >= cut)


def ties_merge(vectors: torch.Tensor, keep_frac: float) -> torch.Tensor:
    """TIES over (n, d) flattened task vectors: trim, elect signs, sum the agreeing entries -> (d,)."""
    trimmed = trim_top(vectors, keep_frac)
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())  # "majority": zero-sum coordinates take the overall sign
    agree = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    return (trimmed * agree).sum(dim=0)


class ContinualTies:
    """FusionBench's two-vector TIES recursion over the flattened merged task vector M."""

    def __init__(self, scale: float, keep_frac: float) -> None:
        self.scale, self.keep_frac = scale, keep_frac
        self.merged: torch.Tensor | None = None  # (d,) flattened M, in named_parameters() order

    @torch.no_grad()
    def add(self, vector: TaskVector) -> None:
        flat = torch.cat([value.flatten() for value in vector.values()])  # the source's named_parameters() order
        if self.merged is None:
            self.merged = self.scale * flat
        else:
            self.merged = self.merged + self.scale * ties_merge(torch.stack([self.merged, flat]), self.keep_frac)

    @torch.no_grad()
    def apply(self, base: nn.Module) -> nn.Module:
        assert self.merged is not None, "TIES needs at least one source"
        return add_scaled(base, unflatten(self.merged, base), 1.0)


@register_merge("ties", lambda cfg: {"scale": str(cfg.baselines.ties_scale),
                                   "keep_frac": str(cfg.baselines.ties_keep_frac)})
def continual_ties(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Base + M, M folded by FusionBench's continual TIES recursion."""
    b = ctx.cfg.baselines
    return merge_task_vectors(ctx, tracker, ContinualTies(b.ties_scale, b.ties_keep_frac))


def unflatten(flat: torch.Tensor, like: nn.Module) -> dict[str, torch.Tensor]:
    """(d,) -> param_name -> tensor shaped like `like`'s parameters (named_parameters() order)."""
    out, i = {}, 0
    for name, p in like.named_parameters():
        out[name] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out

