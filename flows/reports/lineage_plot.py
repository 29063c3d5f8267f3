"""A lineage as a picture: val/test accuracy per stage, with peak RSS and models alive underneath."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from grasp_core.errors import GraspError


def _values(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r[key] is None else r[key] / scale for r in rows]


def lineage_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write a PNG of `rows` (from `flows.stores.registry.lineage`, newest first), oldest stage on the left.

    Top: val and test accuracy per version. Bottom: process peak RSS (MiB, bars) and models alive (line, right
    axis). Peak RSS is the process's lifetime peak when the stage finished, so it never falls within one run.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    if not rows:
        raise GraspError("lineage plot: no versions to plot; check the reference with `grasp lineage`")
    ordered = rows[::-1]
    x = list(range(len(ordered)))
    labels = [f"v{r['version']}\nstage {r['stage']}\n{r['source_domain']}" for r in ordered]
    fig = Figure(figsize=(max(5.0, 1.1 * len(ordered) + 2.5), 6.0), dpi=100)
    acc_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    for key, label in (("val_accuracy", "val"), ("test_accuracy", "test")):
        acc_ax.plot(x, _values(ordered, key), marker="o", label=label)
    acc_ax.set(ylabel="accuracy", title=f"{rows[0]['model_name']}: lineage of v{rows[0]['version']}")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right")
    mem_ax.bar(x, _values(ordered, "peak_rss_bytes", 2**20), color="tab:gray", alpha=0.6)
    mem_ax.set_ylabel("peak RSS (MiB)")
    alive = mem_ax.twinx()
    alive.plot(x, _values(ordered, "models_alive"), marker="s", color="tab:red")
    alive.set_ylabel("models alive", color="tab:red")
    alive.set_ylim(0, max([2.0, *(v for v in _values(ordered, "models_alive") if not math.isnan(v))]) + 1)
    mem_ax.set_xticks(x, labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def log_lineage_plot(ws: Path, tracking_uri: str | None, rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the plot and log it under `lineage/` of the newest version's run; returns the local PNG."""
    from flows.stores.registry import open_registry

    lineage_plot(rows, path)
    open_registry(ws, tracking_uri).client.log_artifact(rows[0]["run_id"], str(path), "lineage")
    return path
