"""Control: the single source with the best zero-shot target-val accuracy, fine-tuned on the target."""

from __future__ import annotations

from collections.abc import Iterator

from grasp_core.memory import MemoryTracker
from grasp_core.methods.common import MethodContext, MethodOutput, finetune_budget, register_method
from grasp_core.order import SourceScore, best_scored, score_sources


@register_method("best_single")
def best_single(ctx: MethodContext, tracker: MemoryTracker) -> MethodOutput:
    """Ranked as `transfer.order: scored` ranks (ties: val loss, then weights hash), so both start alike."""

    def sampled() -> Iterator[SourceScore]:
        for score in score_sources(ctx.source_names, ctx.open_source, ctx.loaders.val, ctx.loaders.num_classes):
            tracker.sample()
            yield score

    best = best_scored(sampled())
    model = ctx.open_source(best.name)
    val_acc, steps = finetune_budget(model, ctx, tracker)
    return MethodOutput(model, val_acc, steps,
                        {"chosen_source": best.name, "zero_shot_val": f"{best.val_accuracy:.4f}"})
