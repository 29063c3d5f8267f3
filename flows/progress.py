"""Human progress on stderr: what is running, epoch by epoch, with elapsed time."""

from __future__ import annotations

import sys
import time

from grasp_core.grasp import StepResult


class Progress:
    """Prints one line per event unless quiet; `verbose` adds every epoch."""

    def __init__(self, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet, self.verbose, self.label, self.t0 = quiet, verbose, "", time.perf_counter()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def stage(self, label: str) -> None:
        self.label = label

    def epoch(self, epoch: int, epochs: int, val_accuracy: float) -> None:
        if self.verbose or epoch == epochs:
            self.say(f"{self.label}: epoch {epoch}/{epochs} val {val_accuracy:.3f}")

    def step(self, result: StepResult) -> None:
        moved = f", transferred {len(result.transferred)}/{len(result.scores)} tensors" if result.scores else ""
        self.say(f"grasp stage {result.stage} [{result.source_name}]{moved}: val {result.val_accuracy:.3f} "
                 f"test {result.test_accuracy:.3f} ({result.wall_s:.1f}s)")
        self.label = f"grasp stage {result.stage + 1}"
