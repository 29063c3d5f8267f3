"""The order GRASP merges sources in (`transfer.order`): as given, nearest in time first, or most aligned first.

The first source of the order becomes the initial target (GRASP step 1), so the order decides the
starting point as much as the sequence of merges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grasp_core.data import Batch
from grasp_core.errors import ConfigError


def _times(names: Sequence[str], target: str) -> dict[str, float]:
    """Domain name -> time: the number it spells (years), else its rank among the sorted names."""
    everything = [*names, target]
    try:
        return {name: float(name) for name in everything}
    except ValueError:
        return {name: float(i) for i, name in enumerate(sorted(everything))}


def nearest_first(names: Sequence[str], target: str) -> list[str]:
    """Sources by |time - target time|, nearest first; a tie keeps the given order (older first when given so)."""
    times = _times(names, target)
    return sorted(names, key=lambda name: abs(times[name] - times[target]))


@torch.no_grad()
def _task_vector_cosine(base: nn.Module, source: nn.Module, descent: dict[str, torch.Tensor]) -> float:
    base_params = dict(base.named_parameters())
    dot = norm_tv = norm_d = 0.0
    for name, p in source.named_parameters():
        if name not in descent:
            continue
        tv = p - base_params[name]
        dot += float(torch.dot(tv.flatten(), descent[name].flatten()))
        norm_tv, norm_d = norm_tv + float(tv.norm() ** 2), norm_d + float(descent[name].norm() ** 2)
    return dot / ((norm_tv * norm_d) ** 0.5 + 1e-12)


def alignment_prepass(names: Sequence[str], open_source: Callable[[str], nn.Module],
                      open_base: Callable[[], nn.Module], batches: list[Batch]) -> dict[str, float]:
    """Streaming pre-pass: per source, cos(theta_source - theta_base, -grad of the target loss at the base).

    A first-order estimate of how much moving the base toward the source lowers the target loss. The
    base and its gradient stay alive and one source at a time is loaded: at most two models, and only
    the scores are kept. The base runs in eval mode (its own BatchNorm statistics).
    """
    base = open_base()
    base.eval()
    base.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(base(x), y).backward()
    descent = {n: -p.grad for n, p in base.named_parameters() if p.grad is not None}
    base.zero_grad(set_to_none=True)
    scores = {}
    for name in names:
        source = open_source(name)
        scores[name] = _task_vector_cosine(base, source, descent)
        del source
    return scores


def order_sources(names: Sequence[str], target: str, order: str,
                  prepass: Callable[[], dict[str, float]] | None = None) -> list[str]:
    """`names` in `transfer.order`; "aligned" calls `prepass()` (see `alignment_prepass`), highest first."""
    if order == "given":
        return list(names)
    if order == "nearest":
        if not target:  # `data.target: ""` is the newest domain: newer than every source listed oldest first
            return list(reversed(names))
        return nearest_first(names, target)
    if order == "aligned":
        if prepass is None:
            raise ConfigError("'transfer.order' = 'aligned' needs the base model for its pre-pass; none was given")
        scores = prepass()
        return sorted(names, key=lambda name: -scores[name])
    raise ConfigError(f"'transfer.order' = '{order}' is unknown; choose one of: aligned, given, nearest")
