"""Render method results as a terminal table and as JSON rows for tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grasp_core.methods import MethodResult

COLUMNS = ("method", "test_accuracy", "val_accuracy", "target_steps", "peak_models_alive", "peak_param_multiple",
           "peak_rss_mb", "wall_s")


def result_row(result: MethodResult, target: str) -> dict[str, Any]:
    mem = result.memory
    return {"method": result.method, "target": target, "test_accuracy": round(result.test_accuracy, 4),
            "val_accuracy": round(result.val_accuracy, 4), "target_steps": result.target_steps,
            "peak_models_alive": mem.models_alive, "peak_param_multiple": mem.param_sized_multiple,
            "peak_param_bytes_alive": mem.param_bytes_alive, "peak_rss_mb": round(mem.peak_rss_bytes / 2**20, 1),
            "cuda_peak_mb": round(mem.cuda_peak_bytes / 2**20, 1), "wall_s": round(result.wall_s, 2),
            **{f"detail.{k}": v for k, v in result.detail.items()}}


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def format_rows(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A table of `columns` (default: the first row's keys, in order)."""
    return format_table(rows, columns or tuple(rows[0])) if rows else "(no rows)"


def stage_row(step: Any, version: str) -> dict[str, Any]:
    """One GRASP stage of a pipeline run, for the terminal."""
    r = step.result
    return {"stage": r.stage, "source": r.source_name, "version": version,
            "transferred": f"{len(r.transferred)}/{len(r.scores)}" if r.scores else "-",
            "val_accuracy": round(r.val_accuracy, 4), "test_accuracy": round(r.test_accuracy, 4),
            "models_alive": r.memory.models_alive, "peak_rss_mb": round(r.memory.peak_rss_bytes / 2**20, 1),
            "wall_s": round(r.wall_s, 2)}


def write_json(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(path)
