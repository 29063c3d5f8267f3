"""GRASP step 2a: per-tensor alignment between a source and the current target (`align.criterion`).

Criteria are registered by name; add one with `@register_alignment("name")` (the signature of `Alignment`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from grasp_core.data import Batch
from grasp_core.registry import lookup, registrar

EPS = 1e-8  # the official code's guard in the cosine denominator


def accumulate_gradients(model: nn.Module, batches: Iterable[Batch], train_mode: bool) -> None:
    """Leave in each `p.grad` the cross-entropy gradient summed over `batches`."""
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


Score = float | torch.Tensor  # one cosine per tensor, or one per output row: shape (rows,)


class Alignment(Protocol):
    """An alignment criterion: (param_name -> score, param_name -> score or (rows,) scores with `per_row`)."""

    def __call__(self, target: nn.Module, source: nn.Module, batches: list[Batch], *, eval_mode: bool = False,
                 per_row: bool = False) -> tuple[dict[str, float], dict[str, Score]]: ...


ALIGNMENTS: dict[str, Alignment] = {}  # keys: `align.criterion`
register_alignment = registrar(ALIGNMENTS, "alignment criterion")


def get_alignment(name: str) -> Alignment:
    return lookup(ALIGNMENTS, name, "align.criterion")


def _cosines(a: torch.Tensor, b: torch.Tensor, per_row: bool) -> tuple[float, Score]:
    """cos(a, b) over the whole tensor and, with `per_row` and >= 2 dims, per output row `a[i]`."""
    whole = float(torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm() + EPS))
    if not per_row or a.dim() < 2:
        return whole, whole
    a, b = a.flatten(1), b.flatten(1)  # (rows, fan_in)
    return whole, (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


@register_alignment("gradient")
def gradient_alignment(target: nn.Module, source: nn.Module, batches: list[Batch], *, eval_mode: bool = False,
                       per_row: bool = False) -> tuple[dict[str, float], dict[str, Score]]:
    """`align.criterion: gradient` (the paper's): cosine between the source's and the target's flattened
    gradients, per parameter tensor and, with `per_row`, per output row.

    As in the official code: the source runs in eval mode (its BatchNorm statistics, no dropout), the
    target in train mode (batch statistics; this also updates its BN running statistics), unless
    `eval_mode` (see `align.eval_mode`). A tensor without a gradient in either model scores 0.
    Gradients are freed before returning, so at most two models and their two gradients are alive here.
    A row is `g[i]` of a gradient with >= 2 dims (a conv filter, a linear row); a 1-D tensor (bias,
    BatchNorm affine) keeps its whole-tensor cosine, because the cosine of one scalar is only its sign.

    Returns:
        (param_name (as `named_parameters()` gives it) -> cosine in [-1, 1], param_name -> cosine or (rows,)
        cosines); the second is empty without `per_row`.
    """
    accumulate_gradients(source, batches, train_mode=False)
    accumulate_gradients(target, batches, train_mode=not eval_mode)
    source_params = dict(source.named_parameters())

    def pair(name: str, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        g_s = source_params[name].grad
        return None if p.grad is None or g_s is None else (p.grad, g_s)

    result = _per_tensor(target, pair, per_row)
    target.zero_grad(set_to_none=True)
    source.zero_grad(set_to_none=True)
    return result


@register_alignment("direction")
def direction_alignment(target: nn.Module, source: nn.Module, batches: list[Batch], *, eval_mode: bool = False,
                        per_row: bool = False) -> tuple[dict[str, float], dict[str, Score]]:
    """`align.criterion: direction`: cos(theta_source - theta_target, -grad of the target loss), per tensor.

    A first-order estimate of whether moving a tensor toward the source lowers the target loss (the
    `transfer.order: aligned` pre-pass asks the same of whole models). Only the target computes a
    gradient (train mode unless `eval_mode`, as in `gradient_alignment`); the source needs none. A tensor
    without a gradient, or equal in both models, scores 0. Rows and the return value as `gradient_alignment`.
    """
    accumulate_gradients(target, batches, train_mode=not eval_mode)
    source_params = dict(source.named_parameters())

    def pair(name: str, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if p.grad is None else (source_params[name] - p, -p.grad)

    result = _per_tensor(target, pair, per_row)
    target.zero_grad(set_to_none=True)
    return result


def _per_tensor(target: nn.Module, pair: Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None],
                per_row: bool) -> tuple[dict[str, float], dict[str, Score]]:
    """The cosines of `pair(name, param)` for every target parameter (0 where it gives None), as the criteria return."""
    scores: dict[str, float] = {}
    rows: dict[str, Score] = {}
    with torch.no_grad():
        for name, p in target.named_parameters():
            vectors = pair(name, p)
            if vectors is None:
                scores[name] = rows[name] = 0.0
                continue
            scores[name], rows[name] = _cosines(*vectors, per_row)
    return scores, (rows if per_row else {})

