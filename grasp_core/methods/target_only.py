"""Control: the shared base fine-tuned on the target alone, no source at all."""

from __future__ import annotations

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, MethodOutput, finetune_budget, register_method


@register_method("target_only")
def target_only(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    model = ctx.open_base()
    tracker.sample()
    val_acc, steps = finetune_budget(model, ctx, tracker)
    return MethodOutput(model, val_acc, steps, {})
