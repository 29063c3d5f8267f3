"""The order GRASP merges sources in (`transfer.order`): as given, nearest in time first, most aligned
first, or best scored first.

The first source of the order becomes the initial target (GRASP step 1), so the order decides the
starting point as much as the sequence of merges. Time is the data's own domain list (`_domains.txt`,
oldest first: the `timeline` argument); a natural sort of the names (year_1-2 < year_3-4 < year_10-11)
is only the fallback when no list covers the names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grasp_core.checkpoints import tensors_sha256
from grasp_core.data import Batch, Split
from grasp_core.data.layout import natural_key
from grasp_core.errors import ConfigError
from grasp_core.finetune import evaluate

ORDER_NAMES = ("aligned", "given", "nearest", "scored")


def _times(names: Sequence[str], timeline: Sequence[str] = ()) -> dict[str, float]:
    """Domain name -> time: its place in `timeline` when that lists every name, else the number the
    name spells (years), else its rank in a natural sort of the names."""
    if timeline and set(names) <= set(timeline):
        return {name: float(i) for i, name in enumerate(timeline)}
    try:
        return {name: float(name) for name in names}
    except ValueError:
        return {name: float(i) for i, name in enumerate(sorted(names, key=natural_key))}


def in_time_order(names: Sequence[str], timeline: Sequence[str]) -> list[str]:
    """`names` oldest first: those in `timeline` (the data's domain list) in its order, then the others in
    a natural sort (a source whose domain has no data, e.g. a checkpoint added from elsewhere)."""
    place = {name: i for i, name in enumerate(timeline)}
    return sorted(names, key=lambda name: (place.get(name, len(place)), natural_key(name)))


def nearest_first(names: Sequence[str], target: str, timeline: Sequence[str] = ()) -> list[str]:
    """Sources by |time - target time|, nearest first; a tie keeps the given order (older first when given so).

    `target` "" is the newest domain: the newest source comes first.
    """
    if not target:
        times = _times(names, timeline)
        return sorted(names, key=lambda name: -times[name])
    times = _times([*names, target], timeline)
    return sorted(names, key=lambda name: abs(times[name] - times[target]))


@dataclass(frozen=True)
class SourceScore:
    """`transfer.order: scored`: one source, as it does zero-shot on the target's validation split."""

    name: str
    val_accuracy: float
    val_loss: float
    weights_sha256: str  # the checkpoint's tensors hash: a tie-break that ignores names and listing

    @property
    def rank_key(self) -> tuple[float, float, str]:
        """Sorts best first: higher accuracy, then lower loss, then the smaller weights hash."""
        return (-self.val_accuracy, self.val_loss, self.weights_sha256)


def score_sources(names: Sequence[str], open_source: Callable[[str], nn.Module], val: Split,
                  num_classes: int) -> Iterator[SourceScore]:
    """Yield each source's zero-shot score on the target's val split, one model alive at a time.

    Zero-shot accuracy (the source as it is, eval mode) is the signal `best_single` picks by, so the
    scored order starts from the very source `best_single` fine-tunes; validation only, never test.
    """
    for name in names:
        model = open_source(name)
        result = evaluate(model, val, num_classes)
        digest = tensors_sha256(model.state_dict())
        del model  # dropped before the next source is opened
        yield SourceScore(name, result.accuracy, result.loss, digest)


def best_scored(scores: Iterator[SourceScore]) -> SourceScore:
    """The best of a stream of scores (see `SourceScore.rank_key`), holding one score at a time."""
    best = None
    for score in scores:
        if best is None or score.rank_key < best.rank_key:
            best = score
    if best is None:
        raise ConfigError("no source model to score; give at least one source")
    return best


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
                  prepass: Callable[[], Mapping[str, Any]] | None = None, timeline: Sequence[str] = ()) -> list[str]:
    """`names` in `transfer.order`.

    Args:
        target: the target domain ("" = the newest); "nearest" measures time from it.
        prepass: for "aligned" and "scored": returns name -> sort key, lowest first (see `merge_order`).
        timeline: every domain of the data, oldest first (the data's domain list); "nearest" reads time here.
    """
    if order == "given":
        return list(names)
    if order == "nearest":
        return nearest_first(names, target, timeline)
    if order in ("aligned", "scored"):
        if prepass is None:
            raise ConfigError(f"'transfer.order' = '{order}' needs a pre-pass over the sources; none was given")
        keys = prepass()
        return sorted(names, key=lambda name: keys[name])
    raise ConfigError(f"'transfer.order' = '{order}' is unknown; choose one of: {', '.join(ORDER_NAMES)}")
