"""Control: the single source with the best zero-shot target-val accuracy, fine-tuned on the target."""

from __future__ import annotations

from torch import nn

from grasp_core.baselines.common import MethodContext, finetune_budget, register_method
from grasp_core.finetune import evaluate
from grasp_core.memory import MemoryTracker


@register_method("best_single")
def best_single(ctx: MethodContext, tracker: MemoryTracker) -> tuple[nn.Module, float, int, dict[str, str]]:
    best_name, best_acc = "", -1.0
    for name, source in ctx.sources():  # one at a time: O(1) models alive
        acc = evaluate(source, ctx.loaders.val, ctx.loaders.num_classes).accuracy
        tracker.sample()
        if acc > best_acc:
            best_name, best_acc = name, acc
        del source
    model = ctx.open_source(best_name)
    val_acc, steps = finetune_budget(model, ctx, tracker)
    return model, val_acc, steps, {"chosen_source": best_name, "zero_shot_val": f"{best_acc:.4f}"}
