"""The GRASP driver: one source at a time into an evolving target (arXiv 2606.14900).

Step 1: the first source, fine-tuned on the target, becomes the target model.
Step 2, per next source: alignment scores on target batches -> transfer policy -> fine-tune.
`run_grasp` consumes an *iterator* of sources and drops each before pulling the next, so at most
two models are alive for any number of sources; the rollback snapshot and the best-validation copy are
parked on disk (`grasp_core.stash`), so fine-tuning peaks at weights, grads and two AdamW moments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from torch import nn

from grasp_core.align import Score, get_alignment
from grasp_core.config import Config
from grasp_core.data import Batch, Batches, DomainData, Split
from grasp_core.errors import ConfigError
from grasp_core.finetune import EpochCallback, evaluate, train_epochs
from grasp_core.memory import MemorySample, MemoryTracker
from grasp_core.stash import WeightStash
from grasp_core.transfer import get_policy, recalibrate_batchnorm

SourceStream = Iterator[tuple[str, nn.Module]]  # (source name, model), loaded lazily one at a time


@dataclass(frozen=True)
class TargetLoaders:
    """Everything a stage reads from the target domain."""

    train: Batches  # shuffled, augmented, drop_last: fine-tuning
    align: Batches  # shuffled, augmented, drop_last: alignment batches are the first `align.batches`
    val: Split
    test: Split
    num_classes: int


def check_plugins(cfg: Config) -> None:
    """Look up the policy and the alignment criterion `cfg` names, so a misspelt name fails before the
    target trains, listing the registered names (the registries, not the config, know them)."""
    get_policy(cfg.transfer.policy)
    get_alignment(cfg.align.criterion)


def target_loaders(data: DomainData, cfg: Config) -> TargetLoaders:
    check_plugins(cfg)
    ft, al = cfg.finetune, cfg.align
    train = Batches(data.train, ft.batch_size, shuffle=True, drop_last=True, augment=cfg.data.augment, seed=cfg.seed)
    align = Batches(data.train, al.batch_size, shuffle=True, drop_last=True, augment=cfg.data.augment,
                    seed=cfg.seed + 7919)
    if len(align) < al.batches:
        raise ConfigError(f"'align.batches' = {al.batches} x 'align.batch_size' = {al.batch_size} needs "
                          f"{al.batches * al.batch_size} target train images; domain {data.name} has "
                          f"{len(data.train)} (raise 'data.target_train_frac' or lower them)")
    if len(train) == 0:
        raise ConfigError(f"'finetune.batch_size' = {ft.batch_size} exceeds the {len(data.train)} target train "
                          f"images of domain {data.name}")
    return TargetLoaders(train=train, align=align, val=data.val, test=data.test, num_classes=len(data.classes))


@dataclass(frozen=True)
class StepResult:
    """One GRASP stage. `target` is the live, updated target model (never written to disk here)."""

    stage: int  # 0 = initial fine-tune of the first source
    source_name: str
    target: nn.Module | None = field(repr=False, compare=False)  # None once detached (see `detached`)
    scores: dict[str, float]  # param_name -> alignment (empty at stage 0)
    transferred: tuple[str, ...]
    tensors_frac: float
    params_transferred: int
    params_frac: float
    val_accuracy: float
    test_accuracy: float
    per_class_accuracy: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]
    steps: int  # target optimizer steps in this stage
    memory: MemorySample
    timings_s: dict[str, float]  # align, transfer, finetune, evaluate
    param_numels: dict[str, int]  # param_name -> number of elements (for tables without the model)
    rejected: bool = False  # `transfer.rollback` refused this source: the target kept its pre-merge weights
    candidate_val_accuracy: float = math.nan  # val accuracy of the merged + fine-tuned candidate (stage >= 1)
    val_history: tuple[float, ...] = ()  # validation accuracy after each fine-tuning epoch of this stage
    train_loss_history: tuple[float, ...] = ()  # mean training loss of each of those epochs
    transfer_refused: bool = False  # `transfer.check` undid this stage's transfer before fine-tuning

    @property
    def wall_s(self) -> float:
        return sum(self.timings_s.values())

    def detached(self) -> StepResult:
        """The same result without the live model (safe to keep, pass between tasks, or log)."""
        return replace(self, target=None)


def _first_batches(batches: Batches, n: int) -> list[Batch]:
    out = []
    for batch in batches:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _finish(stage: int, name: str, target: nn.Module, loaders: TargetLoaders, epochs: int, cfg: Config,
            tracker: MemoryTracker, on_epoch: EpochCallback | None, scores: dict[str, float],
            transferred: list[str], timings: dict[str, float], moved_params: float | None = None) -> StepResult:
    """Fine-tune, evaluate and package a stage (shared by step 1 and step 2).

    `moved_params`: elements the policy moved, as it counts them; None: the whole `transferred` tensors.
    """
    t0 = time.perf_counter()
    stage_result = train_epochs(target, loaders.train, loaders.val, epochs, cfg.finetune.lr,
                                cfg.finetune.weight_decay, tracker, on_epoch)
    t1 = time.perf_counter()
    test = evaluate(target, loaders.test, loaders.num_classes)
    timings.update(finetune=t1 - t0, evaluate=time.perf_counter() - t1)
    sizes = {n: p.numel() for n, p in target.named_parameters()}
    moved = sum(sizes[n] for n in transferred) if moved_params is None else round(moved_params)
    return StepResult(stage=stage, source_name=name, target=target, scores=scores, transferred=tuple(transferred),
                      tensors_frac=len(transferred) / len(sizes) if scores else 0.0, params_transferred=moved,
                      params_frac=moved / sum(sizes.values()) if scores else 0.0,
                      val_accuracy=stage_result.best_val_accuracy, test_accuracy=test.accuracy,
                      per_class_accuracy=test.per_class_accuracy, confusion=test.confusion,
                      steps=stage_result.steps, memory=tracker.take_peak(), timings_s=timings, param_numels=sizes,
                      val_history=stage_result.val_history, train_loss_history=stage_result.train_loss_history)


def initial_step(first: nn.Module, name: str, loaders: TargetLoaders, cfg: Config, tracker: MemoryTracker,
                 on_epoch: EpochCallback | None = None) -> StepResult:
    """GRASP step 1: the first source, fine-tuned on the target, becomes the target model."""
    tracker.sample()
    return _finish(0, name, first, loaders, cfg.finetune.initial_epochs, cfg, tracker, on_epoch, {}, [],
                   {"align": 0.0, "transfer": 0.0})


@dataclass(frozen=True)
class Merge:
    """What GRASP step 2a-b did to the target for one source."""

    scores: dict[str, float]
    transferred: list[str]
    timings_s: dict[str, float]
    moved_params: float | None = None  # elements the policy moved, as it counts them (see `_finish`)


def merge_source(target: nn.Module, source: nn.Module, loaders: TargetLoaders, cfg: Config,
                 tracker: MemoryTracker) -> Merge:
    """GRASP step 2a-b: alignment scores on target batches, then the transfer policy (in place).

    Options: `align.criterion`, `align.eval_mode`, `transfer.granularity`, `transfer.policy`,
    `transfer.bn_recalibrate`.
    """
    tr = cfg.transfer
    policy = get_policy(tr.policy)
    t0 = time.perf_counter()
    per_row = tr.granularity == "channel"
    alignment = get_alignment(cfg.align.criterion)
    scores, rows = alignment(target, source, _first_batches(loaders.align, cfg.align.batches),
                             eval_mode=cfg.align.eval_mode, per_row=per_row)
    tracker.sample()
    t1 = time.perf_counter()
    applied: dict[str, Score] = rows if per_row else dict(scores)
    moved = policy(target, source, applied, tr)
    if tr.bn_recalibrate:  # every merge step, transferred or not: transfer_off gets the same ingredient
        recalibrate_batchnorm(target, loaders.train.split.x)
    return Merge(scores, moved.names, {"align": t1 - t0, "transfer": time.perf_counter() - t1}, moved.elements)


def grasp_step(target: nn.Module, source: nn.Module, name: str, stage: int, loaders: TargetLoaders,
               cfg: Config, tracker: MemoryTracker, on_epoch: EpochCallback | None = None) -> StepResult:
    """GRASP step 2 for one source: align, transfer, fine-tune, evaluate.

    The caller's reference keeps `source` alive during fine-tuning; `run_grasp` avoids that.
    """
    merge = merge_source(target, source, loaders, cfg, tracker)
    return _finish(stage, name, target, loaders, cfg.finetune.epochs, cfg, tracker, on_epoch, merge.scores,
                   merge.transferred, merge.timings_s, merge.moved_params)


def position_batches(loaders: TargetLoaders, cfg: Config, stage: int) -> None:
    """Put the target's batch streams where an uninterrupted run would be at the start of `stage`.

    Shuffles depend only on (seed, stage), so a stage run alone (a pipeline task, a resumed run)
    sees exactly the batches it would have seen inside one long run.
    """
    ft = cfg.finetune
    loaders.train.passes = 0 if stage == 0 else ft.initial_epochs + (stage - 1) * ft.epochs
    loaders.align.passes = max(stage - 1, 0)


def run_grasp(sources: SourceStream, loaders: TargetLoaders, cfg: Config, tracker: MemoryTracker | None = None,
              on_epoch: EpochCallback | None = None, *, target: nn.Module | None = None,
              start_stage: int = 0) -> Iterator[StepResult]:
    """Run GRASP over a stream of sources, yielding one `StepResult` per stage.

    Without `target`, the first source becomes the target (step 1, stage 0). With `target` (a
    resumed run, an incremental run from the champion, one pipeline task), every source of the
    stream is merged into it, numbered from `start_stage`. Each source is released before
    fine-tuning; the caller must not keep references to the models the stream hands out.

    `transfer.rollback`: a stage whose candidate is worse on val than the incoming target is
    `rejected` and the target keeps its incoming weights. `transfer.keep_global_best` (redundant
    with rollback, which never lets val accuracy drop): once the stream is exhausted, the live target
    is reset to the best-val stage's weights, so the last `StepResult` may describe a later, worse stage.
    `transfer.check`: a transfer that lowers val accuracy before fine-tuning is undone (`transfer_refused`)
    and the stage fine-tunes the incoming weights; it uses the rollback snapshot, so no copy is added.
    """
    stream = iter(sources)
    stage = start_stage
    best = GlobalBest() if cfg.transfer.keep_global_best and not cfg.transfer.rollback else None
    if target is None:
        try:
            name, target = next(stream)
        except StopIteration:
            raise ConfigError("GRASP needs at least one source model; none was given") from None
        tracker = tracker or MemoryTracker.for_model(target)
        position_batches(loaders, cfg, 0)
        first = initial_step(target, name, loaders, cfg, tracker, on_epoch)
        if best is not None:
            best.offer(first)
        yield first
        stage = 1
    tracker = tracker or MemoryTracker.for_model(target)
    for name, source in stream:  # not enumerate(): its cached result tuple would keep the source alive
        position_batches(loaders, cfg, stage)
        guarded = cfg.transfer.rollback or cfg.transfer.check
        guard = _park(target) if guarded else None  # before alignment moves BN statistics
        parent_val = evaluate(target, loaders.val, loaders.num_classes).accuracy if guard is not None else 0.0
        untransferred_val = _untransferred_val(target, loaders, cfg) if cfg.transfer.check else parent_val
        merge = merge_source(target, source, loaders, cfg, tracker)
        del source  # dropped before fine-tuning: weights, grads and 2 AdamW moments remain (copies are on disk)
        refused = guard is not None and cfg.transfer.check and _refuse(target, merge, guard, untransferred_val,
                                                                       loaders, cfg)
        transferred, moved = ([], 0.0) if refused else (merge.transferred, merge.moved_params)
        result = _finish(stage, name, target, loaders, cfg.finetune.epochs, cfg, tracker, on_epoch, merge.scores,
                         transferred, merge.timings_s, moved)
        result = replace(result, candidate_val_accuracy=result.val_accuracy, transfer_refused=refused)
        if guard is not None:
            if cfg.transfer.rollback and result.val_accuracy < parent_val:
                result = _reject(result, target, guard, parent_val, loaders)
            guard.close()
        if best is not None:
            best.offer(result)
        yield result
        stage += 1
    if best is not None:
        best.restore(target)


def _park(model: nn.Module) -> WeightStash:
    """The rollback snapshot: every weight and buffer, parked on disk (not a fifth copy in memory)."""
    stash = WeightStash(prefix="grasp-rollback-")
    stash.put(model)
    return stash


def _untransferred_val(target: nn.Module, loaders: TargetLoaders, cfg: Config) -> float:
    """`transfer.check`'s reference: val accuracy of the incoming target as a refused stage would fine-tune it
    (BatchNorm recalibrated on target images when the merge would recalibrate it), so the check compares the
    transfer alone. Train-mode alignment ignores the running statistics this recomputes."""
    if cfg.transfer.bn_recalibrate:
        recalibrate_batchnorm(target, loaders.train.split.x)
    return evaluate(target, loaders.val, loaders.num_classes).accuracy


def _refuse(target: nn.Module, merge: Merge, previous: WeightStash, untransferred_val: float,
            loaders: TargetLoaders, cfg: Config) -> bool:
    """`transfer.check`: undo a transfer that lowered val accuracy before any fine-tuning; True when undone.

    The stage then fine-tunes the pre-merge weights, as transfer_off would (BN recalibrated alike), so a
    refused transfer costs no target budget. Nothing moved: nothing to check (transfer_off is unchanged).
    """
    if not merge.transferred or evaluate(target, loaders.val, loaders.num_classes).accuracy >= untransferred_val:
        return False
    previous.restore(target)
    if cfg.transfer.bn_recalibrate:
        recalibrate_batchnorm(target, loaders.train.split.x)
    return True


def _reject(result: StepResult, target: nn.Module, previous: WeightStash, parent_val: float,
            loaders: TargetLoaders) -> StepResult:
    """`transfer.rollback`: put the pre-merge weights back and describe the model that was kept."""
    previous.restore(target)
    test = evaluate(target, loaders.test, loaders.num_classes)
    return replace(result, rejected=True, val_accuracy=parent_val, test_accuracy=test.accuracy,
                   per_class_accuracy=test.per_class_accuracy, confusion=test.confusion)


class GlobalBest:
    """`transfer.keep_global_best`: the best-val stage's weights (parked on disk), restored when the stream ends."""

    def __init__(self) -> None:
        self.stash = WeightStash(prefix="grasp-global-best-")
        self.val_accuracy, self.stage, self.last_stage = -1.0, -1, -1

    def offer(self, result: StepResult) -> None:
        assert result.target is not None
        self.last_stage = result.stage
        if result.val_accuracy > self.val_accuracy:
            self.stash.put(result.target)
            self.val_accuracy, self.stage = result.val_accuracy, result.stage

    def restore(self, target: nn.Module) -> None:
        if self.stash.full and self.stage != self.last_stage:
            self.stash.restore(target)
        self.stash.close()
