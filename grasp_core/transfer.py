"""GRASP step 2b: transfer policies, registered by name (`transfer.policy`).

A policy changes the target in place from the source and the alignment scores and returns what it
moved (`Moved`: the tensors it changed and how many elements), so it alone knows how to count its
own transfer. A score is one cosine per tensor, or one per output row
(`transfer.granularity: channel`, see `grasp_core.align.gradient_alignment`). Add a policy with
`@register_policy("name")`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import nn

from grasp_core.align import Score
from grasp_core.config import TransferConfig
from grasp_core.registry import lookup, registrar


class Moved(NamedTuple):
    """What a policy changed in the target."""

    names: list[str]  # param_names of the tensors it changed, in the order of the scores
    elements: float  # parameters changed, in elements: rows copied x row size, or weight x elements (soft)


Policy = Callable[[nn.Module, nn.Module, Mapping[str, Score], TransferConfig], Moved]
POLICIES: dict[str, Policy] = {}


register_policy = registrar(POLICIES, "policy")


def get_policy(name: str) -> Policy:
    return lookup(POLICIES, name, "transfer.policy")


def _rows(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (rows,) or 0-d weight shaped to broadcast over `like` (rows, ...)."""
    return weight.reshape(-1, *[1] * (like.dim() - 1)) if weight.dim() == 1 else weight


@register_policy("paper")
@torch.no_grad()
def hard_copy_above(target: nn.Module, source: nn.Module, scores: Mapping[str, Score],
                    cfg: TransferConfig) -> Moved:
    """The official rule: copy whole source tensors whose alignment exceeds the threshold (strict >).

    With per-row scores, only the rows above the threshold are copied. Parameters only; buffers
    (BatchNorm running statistics) stay the target's.
    """
    source_params = dict(source.named_parameters())
    target_params = dict(target.named_parameters())
    copied: list[str] = []
    elements = 0.0
    for name, score in scores.items():
        p = target_params[name]
        if isinstance(score, torch.Tensor):
            above = score > cfg.threshold  # (rows,)
            if bool(above.any()):
                p.copy_(torch.where(_rows(above, p), source_params[name], p))
                copied.append(name)
                elements += float(above.float().mean()) * p.numel()  # rows of a tensor are the same size
        elif score > cfg.threshold:
            p.copy_(source_params[name])
            copied.append(name)
            elements += p.numel()
    return Moved(copied, elements)


def soft_weight(score: Score, threshold: float) -> torch.Tensor:
    """The `soft` policy's interpolation weight: w = clamp((score - threshold) / (1 - threshold), 0, 1).

    0 at or below the threshold (nothing moves, as the hard rule), rising linearly to 1 (a full copy)
    at perfect alignment; a threshold of 1 moves nothing.
    """
    score = torch.as_tensor(score, dtype=torch.float32)
    if threshold >= 1.0:
        return torch.zeros_like(score)
    return ((score - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)


@register_policy("soft")
@torch.no_grad()
def interpolate_by_alignment(target: nn.Module, source: nn.Module, scores: Mapping[str, Score],
                             cfg: TransferConfig) -> Moved:
    """Move each tensor (or row) toward the source: theta <- theta + w * (theta_source - theta), w = `soft_weight`.

    Counted as moved: w x the tensor's elements (the mean w over its rows with per-row scores).
    """
    source_params = dict(source.named_parameters())
    target_params = dict(target.named_parameters())
    moved: list[str] = []
    elements = 0.0
    for name, score in scores.items():
        weight = soft_weight(score, cfg.threshold)
        if bool((weight > 0).any()):
            p = target_params[name]
            p.add_(_rows(weight, p).to(p.dtype) * (source_params[name] - p))
            moved.append(name)
            elements += float(weight.mean()) * p.numel()
    return Moved(moved, elements)


@register_policy("none")
def no_transfer(target: nn.Module, source: nn.Module, scores: Mapping[str, Score],
                cfg: TransferConfig) -> Moved:
    """Transfer switched off: GRASP's schedule reduces to sequential fine-tuning (a control)."""
    return Moved([], 0.0)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> int:
    """Recompute every BatchNorm's running statistics as the exact average over `images` (B, C, H, W).

    Target images only, no augmentation, no gradient; parameters are untouched. Returns the number of
    BatchNorm layers recalibrated (0: the model has none and nothing ran).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches seen
    was_training = model.training
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)
