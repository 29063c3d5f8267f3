"""O(1) competitor: orthogonal projection continual merging (OPCM, arXiv 2501.09522), then the target budget.

Written from the paper's description (FusionBench lists it as `opcm`): sources arrive one at a time as
task vectors tau_t = theta_t - theta_base; each new update is projected onto the subspace orthogonal to
what is merged so far, and an adaptive scale keeps the merged model's distance from the base stable.
- Weight matrices (a parameter with 2+ dims, seen as (out, rest)): the running sum S of projected task
  vectors starts at tau_1. For each next source, S = U diag(s) V^T (SVD); the principal subspace is the
  fewest top singular pairs whose singular values sum to `baselines.opcm_alpha` of the total; the new
  update is tau_t - U_r U_r^T tau_t V_r V_r^T, which has no component on any u_i v_j^T of that subspace
  (so it does not overwrite what S already encodes), and it is added to S. The merged matrix is
  theta_base + lambda S with lambda = mean_t ||tau_t|| / ||S|| (Frobenius): as far from the base as the
  average source, however many sources were merged (orthogonal sums grow like sqrt(t), plain sums like t).
- Vectors and scalars (biases, norm scales): the running mean of the task vectors, as the paper does.
Alive: the base, one source, S and the running norms (one parameter-sized set). Buffers stay the base's.
"""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, register_merge
from grasp_core.methods.task_vectors import TaskVector, merge_task_vectors


def principal_subspace(matrix: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, V_r): the top singular vectors of (m, n) `matrix` whose singular values sum to `alpha` of the total."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    total = float(s.sum())
    if total == 0.0:
        return u[:, :0], vh[:0].T
    rank = int((torch.cumsum(s, 0) < alpha * total).sum()) + 1  # fewest pairs reaching the share
    return u[:, :rank], vh[:rank].T


def project_out(update: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`update` (m, n) minus its part on span{u_i v_j^T}: orthogonal (Frobenius) to every matrix U_r X V_r^T."""
    return update - u @ (u.T @ update @ v) @ v.T


class OrthogonalMerge:
    """OPCM's running state for one model: S per parameter, the running mean of task-vector norms, the count."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.merged: TaskVector = {}  # matrices: sum of projected updates; others: running mean
        self.mean_norm: dict[str, float] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, vector: TaskVector) -> None:
        """Fold one source's task vector in (the vector is consumed)."""
        self.count += 1
        for name, tau in vector.items():
            norm = float(tau.norm())
            self.mean_norm[name] = self.mean_norm.get(name, 0.0) + (norm - self.mean_norm.get(name, 0.0)) / self.count
            if name not in self.merged:
                self.merged[name] = tau.clone()
            elif tau.dim() < 2:
                self.merged[name].add_((tau - self.merged[name]) / self.count)
            else:
                self.merged[name].add_(self._projected(self.merged[name], tau))

    def _projected(self, merged: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        flat = merged.reshape(merged.shape[0], -1)  # (out, in * kh * kw) for convolutions
        u, v = principal_subspace(flat.float(), self.alpha)
        return project_out(tau.reshape_as(flat).float(), u, v).to(tau.dtype).view_as(tau)

    @torch.no_grad()
    def apply(self, base: nn.Module) -> nn.Module:
        """theta_base + lambda S for matrices, theta_base + mean tau for the rest, in place on `base`."""
        assert self.count > 0, "OPCM needs at least one source"
        for name, p in base.named_parameters():
            merged = self.merged[name]
            scale = 1.0
            if merged.dim() >= 2:
                norm = float(merged.norm())
                scale = self.mean_norm[name] / norm if norm > 0 else 0.0
            p.add_(scale * merged)
        return base


@register_merge("opcm", lambda cfg: {"alpha": str(cfg.baselines.opcm_alpha)})
def continual_opcm(ctx: MethodContext, tracker: MemoryTracker) -> nn.Module:
    """Base + OPCM's orthogonally projected, rescaled sum of the task vectors."""
    return merge_task_vectors(ctx, tracker, OrthogonalMerge(ctx.cfg.baselines.opcm_alpha))

