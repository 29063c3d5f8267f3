"""GRASP step 2a: per-tensor gradient alignment between a source and the current target."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from grasp_core.data import Batch

EPS = 1e-8  # the official code's guard in the cosine denominator


def accumulate_gradients(model: nn.Module, batches: Iterable[Batch], train_mode: bool) -> None:
    """Leave in each `p.grad` the cross-entropy gradient summed over `batches`."""
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


def alignment_scores(target: nn.Module, source: nn.Module, batches: list[Batch]) -> dict[str, float]:
    """Cosine between the source's and the target's flattened gradients, per parameter tensor.

    As in the official code: the source runs in eval mode (its BatchNorm statistics, no dropout), the
    target in train mode (batch statistics; this also updates its BN running statistics). A tensor
    without a gradient in either model scores 0. Gradients are freed before returning, so at most
    two models and their two gradients are alive here.

    Returns:
        param_name (as `named_parameters()` gives it) -> cosine in [-1, 1].
    """
    accumulate_gradients(source, batches, train_mode=False)
    accumulate_gradients(target, batches, train_mode=True)
    source_params = dict(source.named_parameters())
    scores: dict[str, float] = {}
    with torch.no_grad():
        for name, p in target.named_parameters():
            g_t, g_s = p.grad, source_params[name].grad
            if g_t is None or g_s is None:
                scores[name] = 0.0
                continue
            dot = torch.dot(g_t.flatten(), g_s.flatten())
            scores[name] = float(dot / (g_t.norm() * g_s.norm() + EPS))
    target.zero_grad(set_to_none=True)
    source.zero_grad(set_to_none=True)
    return scores
