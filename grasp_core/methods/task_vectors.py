"""Task vectors and the one streaming loop that task arithmetic, TIES and OPCM share.

A task vector is tau_k = theta_k - theta_base over the parameters. Each of these merges keeps a running
state (`TaskVectorMerge`): `add` folds one source's task vector in, `apply` writes the result onto the
base. `merge_task_vectors` is the loop itself, so the base and one source are the only models alive
whichever merge runs; only the state differs (mergekit's generalised task arithmetic makes the same cut:
sparsification, sign consensus and weighting are the method-specific parts). Buffers stay the base's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext

TaskVector = dict[str, torch.Tensor]  # param_name -> theta_source - theta_base


class TaskVectorMerge(Protocol):
    """The running state of a task-vector merge."""

    def add(self, vector: TaskVector) -> None:
        """Fold one source's task vector in."""

    def apply(self, base: nn.Module) -> nn.Module:
        """Write the merge onto `base` (in place) and return it."""


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


@torch.no_grad()
def merge_task_vectors(ctx: MethodContext, tracker: MemoryTracker, state: TaskVectorMerge) -> nn.Module:
    """Open the base, fold every source's task vector into `state` in merge order, apply it to the base."""
    base = ctx.open_base()
    for vector in task_vectors(ctx, base, tracker):
        state.add(vector)
        del vector
    return state.apply(base)
