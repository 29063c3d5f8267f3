"""The selection protocol `grasp bench accuracy` and `grasp bench ablation` share.

1. **Select** on *selection seeds*: every candidate runs; the one with the highest mean VALIDATION
   accuracy (per seed over targets, then over seeds) is chosen. Test accuracy plays no part.
2. **Confirm** on *confirmation seeds*, disjoint from the selection seeds: the choice and the controls
   run again on fresh data, sources and target subsets; the test accuracy of the choice is reported,
   with paired differences (method minus control, seed by seed): mean, std, min..max and wins x/n.

Stdlib only, like the benches that import it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from collections.abc import Sequence
from typing import Any

from grasp_core.errors import GraspError

Row = dict[str, Any]


NOT_IN_COMMAND = frozenset({"debug", "command", "bench", "handler", "quiet", "json", "tracking_uri"})


def command_line(args: argparse.Namespace) -> str:
    """The bench's command with every option spelled out (defaults included): the line that regenerates a table."""
    words = ["grasp", "bench", args.bench]
    for key, value in vars(args).items():
        if key not in NOT_IN_COMMAND and value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(words)


def check_seed_split(select: Sequence[int], confirm: Sequence[int]) -> None:
    """Confirmation seeds must exist and never select: a GraspError names the overlap otherwise."""
    if not confirm:
        raise GraspError("--seeds: empty; give at least one confirmation seed, e.g. 3,4,5")
    if overlap := sorted(set(select) & set(confirm)):
        raise GraspError(f"--select-seeds and --seeds share {', '.join(map(str, overlap))}; confirmation seeds "
                         "must never select: give disjoint lists, e.g. --select-seeds 0,1,2 --seeds 3,4,5")


def per_seed(rows: list[Row], method: str, key: str, target: str | None = None) -> dict[int, float]:
    """seed -> `key` of `method` on `target`; with target None, seed -> its mean over targets."""
    values: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == method and (target is None or r["target"] == target):
            values.setdefault(r["seed"], []).append(float(r[key]))
    return {seed: statistics.fmean(v) for seed, v in values.items()}


def choose_on_val(rows: list[Row], candidates: Sequence[str]) -> str:
    """The candidate with the highest mean validation accuracy over the rows' seeds; a tie keeps the first listed."""
    scores = {c: statistics.fmean(v.values()) for c in candidates if (v := per_seed(rows, c, "val_accuracy"))}
    if not scores:
        raise GraspError(f"no selection rows for any of {', '.join(candidates)}; nothing to choose from")
    return max(scores, key=lambda c: (scores[c], -list(candidates).index(c)))


def paired(rows: list[Row], method: str, control: str, target: str | None = None,
           key: str = "test_accuracy") -> list[float]:
    """Test (or `key`) accuracy of `method` minus `control`, seed by seed (seeds both ran), in points."""
    ours, theirs = per_seed(rows, method, key, target), per_seed(rows, control, key, target)
    return [100 * (ours[s] - theirs[s]) for s in sorted(ours) if s in theirs]


def format_paired(diffs: Sequence[float]) -> str:
    """`"+1.2 ± 0.8 [-0.1..+2.0] 3/3"`: mean ± std, min..max (points) and seeds where the method is strictly ahead."""
    if not diffs:
        return "-"
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    wins = sum(d > 0 for d in diffs)
    return f"{statistics.fmean(diffs):+.1f} ± {std:.1f} [{min(diffs):+.1f}..{max(diffs):+.1f}] {wins}/{len(diffs)}"


def paired_table(rows: list[Row], method: str, controls: Sequence[str], key: str = "test_accuracy") -> list[str]:
    """Markdown: one row per control, one column per target and the mean, cells `format_paired` (of `key`)."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    lines = [f"| {method} − | " + " | ".join([*targets, "mean"]) + " |",
             "|---|" + "---:|" * (len(targets) + 1)]
    for control in controls:
        if control == method:
            continue
        cells = [format_paired(paired(rows, method, control, t, key)) for t in [*targets, None]]
        lines.append(f"| {control} | " + " | ".join(cells) + " |")
    return lines


def selection_table(rows: list[Row], candidates: Sequence[str], chosen: str) -> list[str]:
    """Markdown: each candidate's val accuracy (%) per target and mean, mean ± std over seeds; the choice in bold."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    lines = ["| candidate | " + " | ".join([*targets, "mean"]) + " |", "|---|" + "---:|" * (len(targets) + 1)]
    for c in candidates:
        cells = []
        for t in [*targets, None]:
            v = list(per_seed(rows, c, "val_accuracy", t).values())
            cells.append(f"{100 * statistics.fmean(v):.1f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}"
                         if v else "-")
        name = f"**{c}** (chosen)" if c == chosen else c
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def selection_section(select_rows: list[Row], candidates: Sequence[str], chosen: str) -> list[str]:
    """Markdown: the selection seeds, each candidate's validation accuracy and the choice."""
    seeds = sorted({r["seed"] for r in select_rows})
    return [f"**Selection** on seeds {', '.join(map(str, seeds))}: validation accuracy (%), mean ± std over seeds "
            f"(test accuracy is not looked at). Chosen: `{chosen}`, the highest mean.", "",
            *selection_table(select_rows, candidates, chosen)]


def confirmation_section(rows: list[Row], compared: Sequence[str], controls: Sequence[str]) -> list[str]:
    """Markdown: each of `compared` minus every control (test accuracy, points) on the rows' seeds."""
    seeds = ", ".join(map(str, sorted({r["seed"] for r in rows})))
    out: list[str] = []
    for method in dict.fromkeys(compared):
        out += [f"**Paired on seeds {seeds}** (never used to select): test accuracy of `{method}` minus each "
                "control, points: mean ± std [min..max] and the seeds where it is ahead.", "",
                *paired_table(rows, method, [c for c in controls if c != method]), ""]
    return out[:-1]
