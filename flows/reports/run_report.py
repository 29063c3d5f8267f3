"""One pipeline run as a self-contained HTML page: accuracy along the merge steps (baselines as reference
lines), the alignment heatmap with the threshold, memory per step, and the tables. Images are embedded
as base64 PNGs, so the single file opens anywhere (and in the MLflow UI, as an artifact of the run)."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from grasp_core.grasp import StepResult

REPORT_ARTIFACT_DIR = "report"
_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:nth-child(2),th:nth-child(2){text-align:left}img{max-width:100%}.note{color:#555}")


def _png(fig: Figure) -> str:
    """The figure as an <img> tag holding its PNG inline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _labels(results: Sequence[StepResult], versions: Sequence[str]) -> list[str]:
    return [f"stage {r.stage}\n{r.source_name}\nv{v}" for r, v in zip(results, versions, strict=True)]


def accuracy_figure(results: Sequence[StepResult], versions: Sequence[str],
                    methods: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """Val and test accuracy per stage; each baseline's test accuracy as a dashed horizontal line."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    fig = Figure(figsize=(max(6.0, 1.2 * len(results) + 3.5), 4.2), dpi=100)
    ax = fig.subplots()
    x = list(range(len(results)))
    ax.plot(x, [r.val_accuracy for r in results], marker="o", label="GRASP val")
    ax.plot(x, [r.test_accuracy for r in results], marker="o", label="GRASP test")
    colors = iter(["tab:gray", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:red"])
    for row in methods:
        if row.get("method") != "grasp" and row.get("test_accuracy") is not None:
            ax.axhline(row["test_accuracy"], ls="--", lw=1, color=next(colors, "black"),
                       label=f"{row['method']} test")
    ax.set_xticks(x, _labels(results, versions))
    ax.set(ylabel="accuracy", title="accuracy along the merge steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def alignment_figure(results: Sequence[StepResult], threshold: float) -> Figure | None:
    """Heatmap of alignment (tensors x merged sources); cells above `threshold` (copied) are outlined."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    merged = [r for r in results if r.scores]
    if not merged:
        return None
    names = list(merged[0].param_numels)
    grid = [[r.scores.get(n, math.nan) for r in merged] for n in names]  # (tensors, sources)
    fig = Figure(figsize=(max(5.0, 0.9 * len(merged) + 4.5), max(3.5, 0.22 * len(names) + 1.8)), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    for j, r in enumerate(merged):
        for i, name in enumerate(names):
            if name in r.transferred:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    ax.set_xticks(range(len(merged)), [f"{r.source_name}\n(stage {r.stage})" for r in merged])
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 30 else 9)
    ax.set_title(f"alignment (cosine per align.criterion); outlined: > threshold {threshold:g}, moved")
    bar = fig.colorbar(image, ax=ax)
    bar.ax.axhline(threshold, color="black", lw=2)
    bar.set_label(f"cosine (black line: threshold {threshold:g})")
    fig.tight_layout()
    return fig


def memory_figure(results: Sequence[StepResult], versions: Sequence[str]) -> Figure:
    """Peak RSS per stage (bars) with models alive and the param-sized multiple (lines, right axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(results) + 3.5), 4.0), dpi=100)
    ax = fig.subplots()
    x = list(range(len(results)))
    ax.bar(x, [r.memory.peak_rss_bytes / 2**20 for r in results], color="tab:gray", alpha=0.6)
    ax.set_ylabel("process peak RSS (MiB)")
    right = ax.twinx()
    right.plot(x, [r.memory.models_alive for r in results], marker="s", color="tab:red", label="models alive")
    right.plot(x, [r.memory.param_sized_multiple for r in results], marker="^", color="tab:blue",
               label="param-sized tensors (model sizes)")
    right.set_ylim(0, max([5.0, *(r.memory.param_sized_multiple for r in results)]) + 1)
    right.set_ylabel("models / model sizes")
    right.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_xticks(x, _labels(results, versions))
    ax.set_title("memory per step (peak RSS is the process's lifetime peak)")
    fig.tight_layout()
    return fig


def stage_rows(results: Sequence[StepResult], versions: Sequence[str]) -> list[dict[str, Any]]:
    """One row per stage for the report's table."""
    rows = []
    for r, version in zip(results, versions, strict=True):
        mem, t = r.memory, r.timings_s
        rows.append({"stage": r.stage, "source": r.source_name, "version": version,
                     "transferred": f"{len(r.transferred)}/{len(r.scores)}" if r.scores else "-",
                     "params_frac": round(r.params_frac, 3), "val_accuracy": round(r.val_accuracy, 4),
                     "test_accuracy": round(r.test_accuracy, 4), "models_alive": mem.models_alive,
                     "param_sized_multiple": mem.param_sized_multiple,
                     "peak_rss_mb": round(mem.peak_rss_bytes / 2**20, 1),
                     **{f"{key}_s": round(t.get(key, 0.0), 2) for key in ("align", "transfer", "finetune", "evaluate")},
                     "wall_s": round(r.wall_s, 2)})
    return rows


def html_table(rows: Sequence[Mapping[str, Any]], css_class: str = "stages") -> str:
    """An HTML table of `rows` (columns: the first row's keys), every cell escaped."""
    if not rows:
        return '<p class="note">(no rows)</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f'<table class="{css_class}"><tr>{head}</tr>{body}</table>'


def render_run_report(results: Sequence[StepResult], versions: Sequence[str], path: Path, *, title: str,
                      threshold: float, methods: Sequence[Mapping[str, Any]] = (), subtitle: str = "") -> Path:
    """Write the HTML report of the GRASP stages `results` (registered as `versions`) to `path`."""
    if not results:
        raise ValueError("run report: no merge steps to report")
    heatmap = alignment_figure(results, threshold)
    sections = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(subtitle)}</p>',
                "<h2>Accuracy along the merge steps</h2>", _png(accuracy_figure(results, versions, methods)),
                "<h2>Alignment per tensor and source</h2>",
                _png(heatmap) if heatmap is not None else '<p class="note">one source only: nothing was aligned</p>',
                "<h2>Memory per step</h2>", _png(memory_figure(results, versions)),
                "<h2>Stages</h2>", html_table(stage_rows(results, versions))]
    if methods:
        sections += ["<h2>Methods on the same target budget</h2>", html_table(list(methods), "methods")]
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_run_report(summary: Any, ws: Path, tracking_uri: str | None, threshold: float,
                     out_dir: Path | None = None) -> Path:
    """Render the report of a pipeline run and log it under `report/` of the run's parent MLflow run.

    Args:
        summary: the flow's `FlowSummary` (uses model_name, target, parent_run_id, steps, versions, methods).
        ws: the workspace root; the page goes to `<ws>/reports/<parent run id>/run-report.html` by default.
        threshold: `transfer.threshold`, drawn on the alignment heatmap.
    """
    from flows.stores.tracking import Tracker

    pairs = [(s.result, v) for s, v in zip(summary.steps, summary.versions, strict=True) if s.result is not None]
    path = (out_dir or ws / "reports" / summary.parent_run_id) / "run-report.html"
    subtitle = (f"target {summary.target}; MLflow parent run {summary.parent_run_id}; transfer threshold "
                f"{threshold:g}; written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    render_run_report([r for r, _ in pairs], [v for _, v in pairs], path, title=f"{summary.model_name}: run report",
                      threshold=threshold, methods=summary.methods or (), subtitle=subtitle)
    Tracker(ws, tracking_uri=tracking_uri).client.log_artifact(summary.parent_run_id, str(path), REPORT_ARTIFACT_DIR)
    return path
