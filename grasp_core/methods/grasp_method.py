"""GRASP itself and its transfer-off control, as methods of the comparison."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from torch import nn

from grasp_core.config import Config
from grasp_core.finetune import train_epochs
from grasp_core.grasp import run_grasp
from grasp_core.memory import MemoryTracker, peak_of
from grasp_core.methods.common import MethodContext, MethodOutput, register_method, stage_epochs
from grasp_core.order import alignment_prepass, order_sources, score_sources
from grasp_core.start import MEAN_NAME, StartChoice, choose_start, merge_config


def merge_order(ctx: MethodContext) -> list[str]:
    """The sources in `transfer.order`; the "aligned" and "scored" pre-passes stream the sources once
    (two models alive at most) and keep only one number per source."""
    order = ctx.cfg.transfer.order
    if order == "given":
        return list(ctx.source_names)
    batches = list(itertools.islice(iter(ctx.loaders.align), ctx.cfg.align.batches)) if order == "aligned" else []
    ctx.loaders.align.reset()  # the pre-pass must not shift the batches GRASP sees

    def prepass() -> dict[str, Any]:
        if order == "scored":
            scores = score_sources(ctx.source_names, ctx.open_source, ctx.loaders.val, ctx.loaders.num_classes)
            return {s.name: s.rank_key for s in scores}
        aligned = alignment_prepass(ctx.source_names, ctx.open_source, ctx.open_base, batches)
        return {name: -cos for name, cos in aligned.items()}  # most aligned first

    return order_sources(ctx.source_names, ctx.target_name or ctx.cfg.data.target, order, prepass, ctx.domains)


def ingredients(cfg: Config) -> dict[str, str]:
    """What a GRASP-schedule method gets besides its transfer policy: the same for GRASP and transfer_off."""
    tr = cfg.transfer
    return {"order": tr.order, "start": tr.start, "guard": "rollback" if tr.rollback else "none",
            "bn_recalibrate": str(tr.bn_recalibrate).lower(), "keep_global_best": str(tr.keep_global_best).lower(),
            "check": str(tr.check).lower(), "after_mean": tr.after_mean, "schedule": cfg.finetune.schedule}


def start_choice(ctx: MethodContext, names: list[str]) -> StartChoice:
    """`transfer.start` over the sources in merge order (grasp_core/start.py); validation only."""
    loaders, tr = ctx.loaders, ctx.cfg.transfer
    return choose_start(tr.start, names, ctx.open_source, loaders.val, loaders.num_classes,
                        loaders.train.split.x, tr.bn_recalibrate)


def _stream(ctx: MethodContext, names: list[str], choice: StartChoice) -> Iterator[tuple[str, nn.Module]]:
    """The start model, then the order's other sources, each opened only when GRASP asks for it."""
    if choice.model is None:
        yield from dataclasses.replace(ctx, source_names=tuple(names)).sources()
        return
    yield MEAN_NAME, choice.model
    yield from dataclasses.replace(ctx, source_names=tuple(names[1:])).sources()


def _start_detail(choice: StartChoice) -> dict[str, str]:
    return {"start_chosen": choice.kind, "start_val_first": f"{choice.first_val_accuracy:.4f}",
            "start_val_mean": f"{choice.mean_val_accuracy:.4f}"}


def stage_config(cfg: Config, start: str) -> Config:
    """The config the stages run with: every source after a mean start is held by it
    (grasp_core.start.merge_config: `transfer.after_mean`); `finetune.schedule: final` trains no epoch between
    merges (the whole budget follows them, `_polish`)."""
    cfg = merge_config(cfg, held_by_start=start == MEAN_NAME)
    if cfg.finetune.schedule == "final":
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=0, epochs=0))
    return cfg


def _polish(ctx: MethodContext, model: nn.Module, tracker: MemoryTracker) -> tuple[float, int]:
    """`finetune.schedule: final`: the whole target budget as one stage after the last merge."""
    ctx.loaders.train.reset()
    epochs = sum(stage_epochs(ctx.cfg, len(ctx.source_names)))
    stage = train_epochs(model, ctx.loaders.train, ctx.loaders.val, epochs, ctx.cfg.finetune.lr,
                         ctx.cfg.finetune.weight_decay, tracker, ctx.on_epoch)
    return stage.best_val_accuracy, stage.steps


def _run(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    names = merge_order(ctx)
    choice = start_choice(ctx, names)
    tracker.sample()
    stream = _stream(ctx, names, choice)
    choice = dataclasses.replace(choice, model=None)  # the stream holds the live mean now, and drops it
    steps, last, best_val, rejected = 0, None, -1.0, []
    for last in run_grasp(stream, ctx.loaders, stage_config(ctx.cfg, choice.kind), tracker, ctx.on_epoch):
        steps += last.steps
        best_val = max(best_val, last.val_accuracy)
        if last.rejected:
            rejected.append(last.source_name)
        if ctx.on_step is not None:
            ctx.on_step(last)
        tracker.peak = peak_of(tracker.peak, last.memory)
    assert last is not None and last.target is not None
    val = best_val if ctx.cfg.transfer.keep_global_best else last.val_accuracy  # the restored stage's
    if ctx.cfg.finetune.schedule == "final":
        val, polish_steps = _polish(ctx, last.target, tracker)
        steps += polish_steps
    return MethodOutput(last.target, val, steps, {"policy": ctx.cfg.transfer.policy, **ingredients(ctx.cfg),
                                                  "order": ",".join(names), "rejected": ",".join(rejected),
                                                  **_start_detail(choice)})


@register_method("grasp")
def grasp(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    """GRASP with the configured transfer policy."""
    return _run(ctx, tracker)


@register_method("transfer_off")
def transfer_off(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    """GRASP's exact schedule and ingredients (`ingredients`: order, guard, BN recalibration) with the
    `none` policy: sequential fine-tuning, nothing copied. Only the policy differs from GRASP's run."""
    cfg = dataclasses.replace(ctx.cfg, transfer=dataclasses.replace(ctx.cfg.transfer, policy="none"))
    return _run(dataclasses.replace(ctx, cfg=cfg), tracker)
