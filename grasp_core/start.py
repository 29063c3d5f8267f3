"""Where GRASP starts (`transfer.start`): the first source of the merge order, or the parameter mean of
every source when the target's validation split prefers it.

GRASP step 1 turns one model into the target. With `first` (the paper) that is the first source of the
order. With `auto` two O(1)-memory candidates compete on validation before any target training: the first
source of the order (with `order: scored`, the best zero-shot source) and the streaming mean of all
sources (their shared base makes the mean a meaningful model; it keeps what every source learnt, which a
single source cannot when each saw only part of the task). The stages that follow are the same either way:
the order's other sources, one at a time. Validation only, never test.

`transfer.after_mean` says what those stages do with a source the mean start already averages
(`merge_config`, keyed by "is this source held by the start", never by its name): `none` fine-tunes
only, `policy` transfers it again. A source the start does not hold (a new source of an incremental run
after a mean-start champion) always goes through `transfer.policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from grasp_core.config import Config
from grasp_core.data import Split
from grasp_core.errors import ConfigError
from grasp_core.finetune import evaluate
from grasp_core.transfer import recalibrate_batchnorm

START_NAMES = ("first", "mean", "auto")
MEAN_NAME = "mean"  # the stage-0 name of the mean start (no domain is called so: `check_start_names`)


@torch.no_grad()
def streaming_mean(names: Sequence[str], open_source: Callable[[str], nn.Module]) -> nn.Module:
    """The element-wise mean of the sources' floating-point weights and buffers, one source loaded at a time.

    The running sum lives in the first source's own tensors, so two models are alive at most. Sums run in
    the order of `names`: given an order that ignores names and listing (`order: scored`), the result
    does too, bit for bit. Integer buffers (BatchNorm's batch counter) keep the first source's value.
    """
    if not names:
        raise ConfigError("no source model to average; give at least one source")
    total = open_source(names[0])
    acc = total.state_dict()  # views of `total`'s tensors: adding into them updates the model
    for name in names[1:]:
        other = open_source(name).state_dict()
        for key, value in acc.items():
            if value.is_floating_point():
                value.add_(other[key])
        del other  # dropped before the next source is opened
    for value in acc.values():
        if value.is_floating_point():
            value.div_(len(names))
    return total


@dataclass(frozen=True)
class StartChoice:
    """What `choose_start` decided; `model` is the live mean when it won, else None (open the first source)."""

    kind: str  # "first" | "mean"
    first_val_accuracy: float  # NaN when not measured (`start: first` / `mean`)
    mean_val_accuracy: float
    model: nn.Module | None


def build_mean_start(names: Sequence[str], open_source: Callable[[str], nn.Module], train_images: torch.Tensor,
                     bn_recalibrate: bool) -> nn.Module:
    """The mean of the sources; its BatchNorm statistics (an average of every source's, which describe no
    model) are recomputed on target train images when `transfer.bn_recalibrate` is on."""
    mean = streaming_mean(names, open_source)
    if bn_recalibrate:
        recalibrate_batchnorm(mean, train_images)
    return mean


def choose_start(start: str, names: Sequence[str], open_source: Callable[[str], nn.Module], val: Split,
                 num_classes: int, train_images: torch.Tensor, bn_recalibrate: bool) -> StartChoice:
    """`transfer.start` over the sources in merge order: `first`, `mean`, or `auto` (the better on val).

    `auto` compares zero-shot val accuracy: the first source as it is, the mean as `build_mean_start` makes
    it; a tie keeps the first source (the simpler start). At most two models are alive.
    """
    nan = float("nan")
    if start == "first":
        return StartChoice("first", nan, nan, None)
    if start not in START_NAMES:
        raise ConfigError(f"'transfer.start' = '{start}' is unknown; choose one of: {', '.join(START_NAMES)}")
    mean = build_mean_start(names, open_source, train_images, bn_recalibrate)
    if start == "mean":
        return StartChoice("mean", nan, nan, mean)
    mean_acc = evaluate(mean, val, num_classes).accuracy
    first = open_source(names[0])
    first_acc = evaluate(first, val, num_classes).accuracy
    del first
    if mean_acc > first_acc:
        return StartChoice("mean", first_acc, mean_acc, mean)
    return StartChoice("first", first_acc, mean_acc, None)


def is_transfer_skipped(cfg: Config, held_by_start: bool) -> bool:
    """Whether a source's stage transfers nothing because the start holds it already: with
    `transfer.after_mean: none` a source averaged into the mean start was merged once, by the average; a
    second transfer of it would count it twice. A source the start does not hold is merged with the policy."""
    return held_by_start and cfg.transfer.after_mean == "none"


def merge_config(cfg: Config, held_by_start: bool) -> Config:
    """The config one source's stage merges with: policy `none` (fine-tuning only) when `is_transfer_skipped`."""
    if not is_transfer_skipped(cfg, held_by_start):
        return cfg
    return replace(cfg, transfer=replace(cfg.transfer, policy="none"))


def transfer_applied(cfg: Config, held_by_start: bool) -> str:
    """What a stage after the first applied, in words for lineage: the policy, or none and why."""
    if is_transfer_skipped(cfg, held_by_start):
        return "none (held by the mean start)"
    return cfg.transfer.policy
