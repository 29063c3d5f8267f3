"""Summaries of benchmark rows over seeds: mean ± sample std, paired differences seed by seed, and the
per-method table (as markdown) that `grasp bench accuracy` and `grasp bench ablation` print."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation is 0.0 for fewer than two values, NaN for none."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """`"65.1 ± 1.2"` (accuracies as percent by default); `signed` writes a leading + on gains; "-" if empty."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean * scale:{'+' if signed else ''}.{digits}f} ± {std * scale:.{digits}f}"


def ordered(rows: list[Row], key: str) -> list[Any]:
    """The distinct values of `key` in `rows`, in first-seen order."""
    return list(dict.fromkeys(r[key] for r in rows))


def accuracies(rows: list[Row], method: str, target: str | None = None, key: str = "test_accuracy") -> dict[int, float]:
    """seed -> `key` (test accuracy) of `method` on `target`; with target None, seed -> its mean over targets."""
    if target is not None:
        return {r["seed"]: r[key] for r in rows if r["method"] == method and r["target"] == target}
    per_seed: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == method:
            per_seed.setdefault(r["seed"], []).append(r[key])
    return {seed: statistics.fmean(values) for seed, values in per_seed.items()}


def paired_differences(rows: list[Row], method: str, control: str, target: str | None = None) -> list[float]:
    """`method` minus `control`, seed by seed (only seeds both ran), on `target` or on the mean over targets."""
    ours, theirs = accuracies(rows, method, target), accuracies(rows, control, target)
    return [ours[s] - theirs[s] for s in sorted(ours) if s in theirs]


def summary_table(rows: list[Row], key: str = "test_accuracy") -> list[dict[str, str]]:
    """One row per method: `mean ± std` over seeds per target, and `mean` (per seed over targets, then seeds)."""
    targets = ordered(rows, "target")
    table = []
    for method in ordered(rows, "method"):
        cells = {t: format_mean_std(list(accuracies(rows, method, t, key).values())) for t in targets}
        table.append({"method": method, **cells,
                      "mean": format_mean_std(list(accuracies(rows, method, key=key).values()))})
    return table


def markdown_table(table: list[dict[str, str]]) -> str:
    """A GitHub markdown table of `summary_table` rows."""
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    return "\n".join(lines)
