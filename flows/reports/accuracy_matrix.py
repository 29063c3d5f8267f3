"""The continual-learning view of a GRASP lineage: an accuracy matrix R (merge steps x domains) and the
summaries Avalanche and FusionBench users expect.

R[k][j] is the test accuracy, on domain j's test split, of the model registered after merge step k (step k
merged source domain s_k, then fine-tuned on the target). A step that merged a mean start (`transfer.start`)
merged every source it averages at once: its domains are its members, never a domain called `mean`. Each
source domain j is seen first at step f_j and merged last at step k_j (the same step unless j was merged
twice, as the default does: in the mean at step 0, then on its own later). With K steps and `base_j` the
shared base model's accuracy on j:

- average accuracy (seen): mean of R[K-1][j] over the merged source domains and the target;
  average accuracy (all): the same over every domain of the data.
- BwT (backward transfer, GEM/Avalanche): mean over source domains j with k_j before the last step of
  R[K-1][j] - R[k_j][j]: what later merges kept (> 0) or forgot (< 0) of domain j after its last merge.
- FwT (forward transfer, GEM): mean over source domains j with f_j after step 0 of R[f_j - 1][j] - base_j:
  how well the chain did on j *before any step had seen j*, relative to the base it and every source started
  from. A mean start's members are seen at step 0, so they have no FwT: with a mean start of every source
  (the default when it wins), FwT is None.

A merged domain without data is left out. The target column is in the averages but in neither transfer term
(it is trained on at every step). BwT or FwT is None when no domain qualifies (one step; no base checkpoint for
FwT; every source in a mean start for FwT).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grasp_core.errors import GraspError
from grasp_core.names import path_inside

if TYPE_CHECKING:
    from torch import nn

    from flows.runtime.options import Subcommands
    from grasp_core.data import Split

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------- pure

def split_accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of `model` on one split."""
    from grasp_core.finetune import predict_logits

    return float((predict_logits(model, split).argmax(dim=1) == split.y).float().mean())


def accuracy_matrix(models_in_order: Iterable[tuple[str, nn.Module]], domains: Mapping[str, Split]) -> list[Row]:
    """One row per model, in order: `{"step": k, "model": label, <domain>: accuracy, ...}`.

    Pass a lazy iterator: each model is dropped before the next is pulled, so one model is alive at a time.
    """
    rows: list[Row] = []
    for label, model in models_in_order:  # not enumerate(): its cached result tuple would keep the model alive
        rows.append({"step": len(rows), "model": label, **{d: split_accuracy(model, s) for d, s in domains.items()}})
        del model
    return rows


Merged = Sequence[str | Sequence[str]]  # per step: its source domain, or a mean start's member domains


def step_domains(merged: Merged) -> list[list[str]]:
    """Per step, the source domains it merged (one, or every member of a mean start)."""
    return [[m] if isinstance(m, str) else list(m) for m in merged]


def merge_steps(merged: Merged, domains: Sequence[str]) -> dict[str, int]:
    """Source domain -> the latest step that merged it (alone or in a mean), for domains that have data."""
    return {d: step for step, group in enumerate(step_domains(merged)) for d in group if d in domains}


def first_steps(merged: Merged, domains: Sequence[str]) -> dict[str, int]:
    """Source domain -> the first step whose model had seen it (alone or in a mean), for domains that have data."""
    found: dict[str, int] = {}
    for step, group in enumerate(step_domains(merged)):
        for d in group:
            if d in domains:
                found.setdefault(d, step)
    return found


def average_accuracy(row: Mapping[str, float], columns: Iterable[str]) -> float:
    """Mean of `row` over `columns` (NaN for none)."""
    values = [row[c] for c in columns]
    return statistics.fmean(values) if values else math.nan


def backward_transfer(rows: Sequence[Mapping[str, float]], merged: Merged, domains: Sequence[str]) -> float | None:
    """Mean over source domains j last merged before the last step of R[last][j] - R[k_j][j]; None if none."""
    last = len(rows) - 1
    gaps = [rows[last][d] - rows[k][d] for d, k in merge_steps(merged, domains).items() if k < last]
    return statistics.fmean(gaps) if gaps else None


def forward_transfer(rows: Sequence[Mapping[str, float]], merged: Merged, domains: Sequence[str],
                     base: Mapping[str, float] | None) -> float | None:
    """Mean over source domains j first seen after step 0 of R[f_j - 1][j] - base_j; None if none or no base."""
    if base is None:
        return None
    gains = [rows[f - 1][d] - base[d] for d, f in first_steps(merged, domains).items() if f > 0]
    return statistics.fmean(gains) if gains else None


def cl_summaries(rows: Sequence[Mapping[str, float]], merged: Merged, domains: Sequence[str], target: str,
                 base: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """`average_accuracy` (merged sources + target, last step), `average_accuracy_all`, `bwt`, `fwt`,
    `target_accuracy` (last step); see the module docstring for the definitions."""
    seen = [d for d in domains if d in set(merge_steps(merged, domains)) | {target}]
    return {"average_accuracy": average_accuracy(rows[-1], seen),
            "average_accuracy_all": average_accuracy(rows[-1], domains),
            "bwt": backward_transfer(rows, merged, domains), "fwt": forward_transfer(rows, merged, domains, base),
            "target_accuracy": rows[-1][target] if target in domains else None}


# ---------------------------------------------------------------------------------------------- files

def step_label(row: Mapping[str, Any]) -> str:
    """What a matrix row's step merged, for people: `2021`, or `mean(2020+2021)` for a mean start."""
    domain, members = row.get("source_domain", ""), row.get("merged_domains", "")
    return domain if not members or members == domain else f"{domain}({members})"


def write_matrix_csv(rows: list[Row], domains: Sequence[str], path: Path, base: Mapping[str, float] | None) -> Path:
    """step, model, source_domain, merged_domains (a mean start's members joined by `+`), one column per domain;
    a first `base` row when the base was evaluated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "model", "source_domain", "merged_domains", *domains],
                                extrasaction="ignore")
        writer.writeheader()
        if base is not None:
            writer.writerow({"step": "base", "model": "base", "source_domain": "", "merged_domains": "", **base})
        writer.writerows(rows)
    return path


def matrix_heatmap(rows: list[Row], domains: Sequence[str], target: str, path: Path, title: str) -> Path:
    """Heatmap of R in percent: merge steps down, domains across (the target's column labelled)."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    values = [[100 * r[d] for d in domains] for r in rows]
    fig = Figure(figsize=(max(4.5, 0.9 * len(domains) + 2.5), max(3.0, 0.55 * len(rows) + 1.8)), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(domains)), [f"{d}\n(target)" if d == target else d for d in domains])
    ax.set_yticks(range(len(rows)), [f"{r['model']} +{step_label(r)}" for r in rows])
    ax.set(xlabel="test domain", ylabel="after merge step", title=title)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 60 else "white")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------- lineage

def _test_splits(ws: Path, params: Path | None) -> tuple[dict[str, Split], Path]:
    """Every domain's test split (domain -> Split) and the data root, from params.yaml's `data.root`."""
    from grasp_core.config import load_config
    from grasp_core.data import check_layout, list_domains, read_split

    params = params or ws / "params.yaml"
    root = ws / (load_config(params).data.root if params.is_file() else "data")
    classes = check_layout(root)
    return {d: read_split(root, d, "test", classes) for d in list_domains(root)}, root


def _base_accuracy(ws: Path, chain: list[Row], splits: Mapping[str, Split]) -> dict[str, float] | None:
    """The base checkpoint's accuracy per domain, or None if it is missing or not the lineage's base."""
    from grasp_core.checkpoints import file_sha256, load_checkpoint

    path = ws / "checkpoints" / "base.safetensors"
    recorded = {r.get("base_sha256", "") for r in chain} - {""}
    if not path.is_file() or (recorded and file_sha256(path) not in recorded):
        return None
    model = load_checkpoint(path)[0]
    return {d: split_accuracy(model, s) for d, s in splits.items()}


def lineage_step_domains(row: Mapping[str, Any]) -> list[str]:
    """The source domains one lineage row's step merged: a mean start's members (its `start_sources`, resolved by
    flows.stores.registry), else its `source_domain`."""
    from flows.stores.start_sources import start_members

    return [m["domain"] for m in start_members(row)] or [row["source_domain"]]


def _versions(uri: str, name: str, chain: list[Row]) -> Iterable[tuple[str, nn.Module]]:
    from flows.stores.registry import load_model

    for r in chain:
        yield f"v{r['version']}", load_model(f"models:/{name}/{r['version']}", uri)  # no local: one model alive


def matrix_for_lineage(ws: Path, tracking_uri: str | None, model_name: str | None = None,
                       version: str = "@champion", params: Path | None = None, out: Path | None = None) -> Row:
    """R for the lineage of `version` (a number or @alias), its summaries, a CSV and a heatmap PNG.

    Loads one registered version at a time with `flows.stores.registry.load_model`. The files (default folder
    `<ws>/reports/matrix-<model>-v<version>/`) and the metrics `cl/average_accuracy`, `cl/average_accuracy_all`,
    `cl/bwt`, `cl/fwt` are logged to the run of the newest version.

    Returns:
        `model_name, version, target, domains, merged (per step, the source domains it merged), rows, base,
        summaries, csv, png`.
    """
    from flows.stores.registry import lineage, open_registry

    tracker = open_registry(ws, tracking_uri)
    chain = lineage(ws, tracker.tracking_uri, version, model_name)[::-1]  # oldest first
    if not chain:
        raise GraspError(f"{version}: empty lineage; check it with `grasp lineage {version}`")
    name, newest, target = chain[-1]["model_name"], chain[-1], chain[-1]["target_domain"]
    splits, _ = _test_splits(ws, params)
    domains, merged = list(splits), [lineage_step_domains(r) for r in chain]
    rows = accuracy_matrix(_versions(tracker.tracking_uri, name, chain), splits)
    for row, r, group in zip(rows, chain, merged, strict=True):
        row["source_domain"], row["merged_domains"] = r["source_domain"], "+".join(group)
    base = _base_accuracy(ws, chain, splits)
    summaries = cl_summaries(rows, merged, domains, target, base)
    folder = out or path_inside(ws / "reports", name, "model name", "matrix-", f"-v{newest['version']}")
    csv_path = write_matrix_csv(rows, domains, folder / "accuracy_matrix.csv", base)
    png = matrix_heatmap(rows, domains, target, folder / "accuracy_matrix.png",
                         f"{name} v{newest['version']}: test accuracy after each merge")
    for path in (csv_path, png):
        tracker.client.log_artifact(newest["run_id"], str(path), "cl")
    tracker.log_metrics(newest["run_id"], {f"cl/{k}": v for k, v in summaries.items()
                                           if v is not None and k != "target_accuracy" and not math.isnan(v)})
    return {"model_name": name, "version": newest["version"], "target": target, "domains": domains,
            "merged": merged, "rows": rows, "base": base, "summaries": summaries, "csv": csv_path, "png": png}


# ---------------------------------------------------------------------------------------------- CLI

def format_matrix(result: Row) -> str:
    """The matrix in percent (a base row first when known) and the summaries, for a terminal."""
    from flows.reports.tables import format_rows

    domains = result["domains"]
    cells = [{"step": "base", "model": "-", "merged": "-", **{d: f"{100 * v:.1f}" for d, v in result["base"].items()}}
             ] if result["base"] else []
    cells += [{"step": str(r["step"]), "model": r["model"], "merged": step_label(r),
               **{d: f"{100 * r[d]:.1f}" for d in domains}} for r in result["rows"]]
    fmt = {k: "-" if v is None or math.isnan(v) else f"{100 * v:+.1f}" if k in ("bwt", "fwt") else f"{100 * v:.1f}"
           for k, v in result["summaries"].items()}
    return "\n".join([f"{result['model_name']} v{result['version']}: test accuracy (%) after each merge step, "
                      f"target {result['target']}", format_rows(cells), "",
                      "  ".join(f"{k} {v}" for k, v in fmt.items()) + "   (percent; bwt/fwt in points)",
                      f"wrote {result['csv']}, {result['png']} (also MLflow artifacts under cl/)"])


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench matrix [REF]` to the `grasp bench` subparsers."""
    p = bench_sub.add_parser("matrix", help="accuracy matrix of a lineage: merge steps x domains, BwT/FwT",
                             description="Evaluate every version of the lineage of REF on every domain's test "
                             "split (one model in memory at a time), print the matrix with average accuracy, "
                             "backward and forward transfer, and log CSV, heatmap and cl/* metrics to REF's run.")
    p.add_argument("ref", nargs="?", default="@champion", help="a version number or @alias (default @champion)")
    p.add_argument("--params", type=Path, help="params.yaml giving data.root (default: <workdir>/params.yaml)")
    p.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    p.add_argument("--model", help="registered model name (default: the only grasp-* model)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///<workdir>/mlflow.db)")
    p.add_argument("--out", type=Path, help="folder for the CSV and PNG (default: <workdir>/reports/matrix-...)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write matrix and summaries as JSON")
    p.set_defaults(handler=cmd_bench_matrix)


def cmd_bench_matrix(args: argparse.Namespace) -> int:
    import json

    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    result = matrix_for_lineage(args.workdir, args.tracking_uri, args.model, args.ref, args.params, args.out)
    print(format_matrix(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0
