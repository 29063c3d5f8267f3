"""Train and evaluate on a domain: the fine-tuning every stage and every baseline shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grasp_core.data import Batches, Split
from grasp_core.memory import MemoryTracker
from grasp_core.stash import WeightStash

EpochCallback = Callable[[int, int, float], None]  # (epoch, epochs, val accuracy)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    per_class_accuracy: tuple[float, ...]  # NaN-free: a class without images scores 0
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class
    loss: float


@dataclass(frozen=True)
class StageResult:
    best_val_accuracy: float
    best_epoch: int  # 1-based; 0 when no epoch ran
    steps: int  # optimizer steps taken (the target-training budget spent)
    val_history: tuple[float, ...]
    train_loss_history: tuple[float, ...] = ()  # mean cross-entropy over each epoch's training batches


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(split.x[i:i + batch_size]) for i in range(0, len(split), batch_size)])  # (N, K)


def evaluate_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> EvalResult:
    """Accuracy, per-class accuracy and confusion matrix from logits (N, K) and labels (N,)."""
    logits, y = logits.float().cpu(), y.cpu()  # small; the metrics are host values anyway
    pred = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per_class = confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()
    return EvalResult(accuracy=float((pred == y).float().mean()),
                      per_class_accuracy=tuple(per_class.tolist()),
                      confusion=tuple(tuple(row) for row in confusion.tolist()),
                      loss=float(F.cross_entropy(logits, y)))


def evaluate(model: nn.Module, split: Split, num_classes: int) -> EvalResult:
    return evaluate_logits(predict_logits(model, split), split.y, num_classes)


def train_epochs(model: nn.Module, train: Batches, val: Split, epochs: int, lr: float, weight_decay: float,
                 tracker: MemoryTracker | None = None, on_epoch: EpochCallback | None = None) -> StageResult:
    """One stage as the official code runs it: a new AdamW, cosine lr stepped per epoch, and the
    weights of the best-validation epoch restored at the end. The official code holds that best copy in
    memory (the "+1" model); here it is parked on disk (`WeightStash`) and read back only when an earlier
    epoch won, so the peak stays at weights, grads and two AdamW moments."""
    if epochs == 0:
        return StageResult(best_val_accuracy=_accuracy(model, val), best_epoch=0, steps=0, val_history=())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best_acc, best_epoch, steps, history, losses = -1.0, 0, 0, [], []
    with WeightStash(prefix="grasp-best-val-") as best:
        for epoch in range(1, epochs + 1):
            taken, loss = _train_one_epoch(model, train, optimizer)
            steps += taken
            losses.append(loss)
            schedule.step()
            acc = _accuracy(model, val)
            history.append(acc)
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                if epoch < epochs:  # the last epoch's weights are the live ones: nothing to park
                    best.put(model)
            if tracker is not None:
                tracker.sample()  # weights, grads and two AdamW moments are alive here; the best copy is on disk
            if on_epoch is not None:
                on_epoch(epoch, epochs, acc)
        model.zero_grad(set_to_none=True)
        del optimizer
        if best_epoch < epochs:
            best.restore(model)
    return StageResult(best_val_accuracy=best_acc, best_epoch=best_epoch, steps=steps, val_history=tuple(history),
                       train_loss_history=tuple(losses))


def _train_one_epoch(model: nn.Module, train: Batches, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """One pass over `train`; returns the optimizer steps taken and the mean training loss."""
    model.train()
    steps = 0
    loss_sum: float | torch.Tensor = 0.0  # summed detached, read once per epoch (no per-batch device sync)
    for x, y in train:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach()
        steps += 1
    return steps, float(loss_sum) / max(steps, 1)


def _accuracy(model: nn.Module, split: Split) -> float:
    return float((predict_logits(model, split).argmax(dim=1) == split.y).float().mean())
