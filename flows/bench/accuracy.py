"""`grasp bench accuracy`: every domain as the target in turn x every method x several seeds, one budget.

One workspace per seed (`<workdir>/seed-<s>/`, its own params.yaml with `seed: s`): the data, the base and
one source model per domain are built once per seed and re-used by every target (a target's own source
model is simply not among its sources). Sources are merged oldest first, including domains newer than the
target. Outputs: a CSV of rows, a markdown summary (mean ± std over seeds, paired GRASP-minus-control
differences), a grouped bar plot, and one MLflow run (experiment `grasp-bench`) holding all of them.

Imports here are stdlib only; torch, mlflow and matplotlib load inside the functions that need them, so
`grasp --help` stays instant.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from flows.bench.summaries import (
    Row,
    accuracies,
    markdown_table,
    mean_std,
    ordered,
    paired_differences,
    summary_table,
)
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress
    from flows.runtime.options import Subcommands
    from grasp_core.config import Config

DEFAULT_METHODS = ("grasp", "transfer_off", "target_only", "best_single", "fusion", "weight_averaging",
                   "task_arithmetic", "ties", "opcm", "ensemble")
ROW_KEYS = ("method", "target", "seed", "test_accuracy", "val_accuracy", "target_steps", "peak_models_alive",
            "peak_rss_mb", "wall_s", "source_order")


# ---------------------------------------------------------------------------------------------- running

def seed_workspace(params: Path, workdir: Path, seed: int) -> tuple[Path, Config]:
    """Write `<workdir>/seed-<seed>/params.yaml` (the given params with `seed` replaced) and load it.

    The file is rewritten only when its content changes, so a re-run keeps every recipe-keyed checkpoint.
    """
    import yaml

    from grasp_core.config import load_config

    raw = yaml.safe_load(params.read_text()) or {}
    raw["seed"] = seed
    root = workdir / f"seed-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    path, text = root / "params.yaml", f"# written by `grasp bench accuracy` from {params}\n" + yaml.safe_dump(raw)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return root, load_config(path)


def prepare_seed(cfg: Config, ws: Workspace, progress: Progress,
                 targets: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Data, base and one source model per domain for this seed. Returns (domains, classes, targets).

    `targets` (default: every domain) are checked against the data before anything trains.

    Domain i's source is trained with seed `cfg.seed + 1 + i`: the seed `grasp run` gives it when the newest
    domain is the target, so one checkpoint serves every target and nothing retrains across targets or re-runs.
    """
    from flows.pipeline.workspace import ensure_base, ensure_source, layout_classes, materialise_data
    from grasp_core.data import input_shape

    domains, _ = materialise_data(cfg, ws)
    classes = layout_classes(cfg, ws)
    if len(domains) < 2:
        raise GraspError(f"{ws.data(cfg)}: {len(domains)} domain(s); the accuracy bench needs at least 2")
    targets = check_choices(targets or domains, domains, "--targets")
    base, trained = ensure_base(cfg, ws, classes, input_shape(ws.data(cfg), domains[0], classes))
    count = int(trained)
    for i, name in enumerate(domains):
        _, trained = ensure_source(cfg, ws, name, classes, base, cfg.seed + 1 + i)
        count += int(trained)
    progress.say(f"seed {cfg.seed}: {len(domains)} domains, base + sources ready ({count} trained now, "
                 f"{len(domains) + 1 - count} re-used)")
    return domains, classes, targets


class BenchCase(NamedTuple):
    """One target of one seed's workspace, prepared (data, base, sources)."""

    cfg: Config
    ws: Workspace
    target: str
    domains: list[str]
    classes: list[str]


def bench_cases(params: Path, workdir: Path, seeds: list[int], targets: list[str] | None,
                progress: Progress) -> Iterator[BenchCase]:
    """Every seed's workspace, prepared once (`seed_workspace`, `prepare_seed`), then each chosen target."""
    from flows.pipeline.workspace import Workspace

    if not seeds:
        raise GraspError("--seeds: empty; give at least one seed, e.g. 0,1,2")
    for seed in seeds:
        root, cfg = seed_workspace(params, workdir, seed)
        ws = Workspace(root)
        domains, classes, chosen = prepare_seed(cfg, ws, progress, targets)
        for target in chosen:
            yield BenchCase(cfg, ws, target, domains, classes)


SOURCE_ORDERS = ("given", "reversed", "permuted")


def bench_target(cfg: Config, ws: Workspace, target: str, domains: list[str], classes: list[str],
                 methods: Sequence[str], progress: Progress, source_order: str = "given") -> list[Row]:
    """Every method on one target (all other domains as sources, oldest first), one row each.

    `source_order` "reversed": the domains' time order is reversed, in the listing of the sources and in the
    domain list the methods read time from, as if the domains had been named the other way round in time
    (distances in time stay the same); "permuted": the same with a shuffle seeded by `cfg.seed`, as if the
    domains had been named in an order unrelated to time.
    """
    from flows.pipeline.core_run import method_context
    from flows.reports.progress import Progress
    from flows.reports.tables import result_row
    from grasp_core.config import replace
    from grasp_core.memory import settle
    from grasp_core.methods import run_method

    cfg_t = replace(cfg, data__target=target)
    sources = [d for d in domains if d != target]
    ctx = method_context(cfg_t, ws, target, sources, classes, Progress(quiet=True))
    if source_order != "given":
        timeline = permuted_domains(list(ctx.domains), source_order, cfg.seed)
        ctx = dataclasses.replace(ctx, source_names=tuple(d for d in timeline if d in sources),
                                  domains=tuple(timeline))
    settle()  # no model alive: later live-tensor scans only look at what each method creates
    rows = []
    for method in methods:
        full = {**result_row(run_method(method, ctx), target), "seed": cfg.seed}
        full["source_order"] = source_order
        rows.append({key: full[key] for key in ROW_KEYS})
        progress.say(f"seed {cfg.seed} target {target} {method:<12} test {full['test_accuracy']:.4f} "
                     f"({full['wall_s']:.1f}s)")
    return rows


def permuted_domains(domains: list[str], source_order: str, seed: int) -> list[str]:
    """The domain list as `--source-order` sees it: given, reversed, or shuffled by `seed`."""
    import random

    if source_order == "reversed":
        return domains[::-1]
    if source_order == "permuted":
        return random.Random(seed).sample(domains, len(domains))
    return domains


def check_choices(given: Iterable[str], known: Sequence[str], flag: str) -> list[str]:
    """`given` unchanged if every name is in `known`; else a GraspError naming the flag and the choices."""
    given = list(given)
    for name in given:
        if name not in known:
            raise GraspError(f"{flag}: '{name}' is unknown; choose from: {', '.join(known)}")
    return given


def run_accuracy_bench(params: Path, workdir: Path, seeds: list[int], targets: list[str] | None,
                       methods: list[str] | None, progress: Progress, *, threads: int = 1,
                       source_order: str = "given") -> list[Row]:
    """Every target x method x seed on GRASP's target budget; one row per run (keys: ROW_KEYS).

    Args:
        source_order: "given" (oldest first), "reversed" or "permuted" (see `bench_target`).
        targets: default: every domain of the data.
        methods: default: DEFAULT_METHODS (keys of grasp_core.methods.METHODS).
        threads: torch intra-op threads while it runs (restored after). 1 is the default because these
            models are tiny: on this 2-core box under load, a GRASP run took 3.2 s with 1 thread and 38.5 s
            with 2 (spinning OpenMP workers). Results do not depend on it for given checkpoints, but sources
            trained under another thread count differ in the last bits (float summation order), so compare
            benches run at one thread count.
    """
    from grasp_core.methods import METHODS
    from grasp_core.threads import pinned_threads

    methods = check_choices(methods or DEFAULT_METHODS, sorted(METHODS), "--methods")
    with pinned_threads(threads):
        return [row for c in bench_cases(params, workdir, seeds, targets, progress)
                for row in bench_target(c.cfg, c.ws, c.target, c.domains, c.classes, methods, progress, source_order)]


def format_markdown(rows: list[Row], wall_s: float | None = None, select_rows: list[Row] | None = None,
                    chosen: str = "", command: str = "") -> str:
    """The report: the command that ran it, the accuracy table; the selection (when `select_rows` chose `chosen`
    on validation); `chosen` and GRASP minus each control, paired by seed (flows/bench/protocol.py)."""
    from flows.bench.protocol import confirmation_section, selection_section

    seeds = ordered(rows, "seed")
    head = [*([f"Command: `{command}`", ""] if command else []),
            f"Test accuracy (%), mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); every "
            "training method has GRASP's target budget (steps below). `mean`: per seed over targets, then "
            "mean ± std over seeds."]
    steps = {m: sorted({r["target_steps"] for r in rows if r["method"] == m}) for m in ordered(rows, "method")}
    body = ["", markdown_table(summary_table(rows)), "",
            "Target optimizer steps per run: " + ", ".join(f"{m} {'/'.join(map(str, s))}" for m, s in steps.items())]
    methods = ordered(rows, "method")
    if select_rows:
        body += ["", *selection_section(select_rows, ordered(select_rows, "method"), chosen)]
    if compared := [m for m in dict.fromkeys([chosen, "grasp"]) if m in methods]:
        body += ["", *confirmation_section(rows, compared, methods)]
    if wall_s is not None:
        body += ["", f"Wall time: {wall_s:.0f} s for {len(rows)} method runs, building each seed's data, base "
                 "and sources included."]
    return "\n".join(head + body) + "\n"


# ---------------------------------------------------------------------------------------------- outputs

def write_csv(rows: list[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_KEYS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def accuracy_plot(rows: list[Row], path: Path) -> Path:
    """Grouped bars: targets (and the mean) on x, one bar per method, std over seeds as error bars."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    targets, methods = ordered(rows, "target"), ordered(rows, "method")
    groups = [*targets, None]
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups) + 2.0), 4.5), dpi=100)
    ax = fig.subplots()
    for i, method in enumerate(methods):
        stats = [mean_std(list(accuracies(rows, method, t).values())) for t in groups]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats], capsize=2, label=method)
    ax.set_xticks(range(len(groups)), [str(t) if t else "mean" for t in groups])
    headroom = 15 * math.ceil(len(methods) / 5)  # above 100 %: the legend, five methods a row
    ax.set(xlabel="target domain", ylabel="test accuracy (%)", ylim=(0, 100 + headroom), yticks=range(0, 101, 20),
           title=f"accuracy per target, mean ± std over {len(ordered(rows, 'seed'))} seed(s)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(methods), 5), loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_outputs(rows: list[Row], out: Path, wall_s: float | None = None, select_rows: list[Row] | None = None,
                  chosen: str = "", command: str = "") -> dict[str, Path]:
    """`accuracy.csv`, `accuracy.md`, `accuracy.png` under `out` (and `accuracy-selection.csv` with `select_rows`,
    the rows `chosen` was picked from on validation); returns them by kind."""
    md = out / "accuracy.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(format_markdown(rows, wall_s, select_rows, chosen, command))
    files = {"csv": write_csv(rows, out / "accuracy.csv"), "md": md, "png": accuracy_plot(rows, out / "accuracy.png")}
    if select_rows:
        files["selection_csv"] = write_csv(select_rows, out / "accuracy-selection.csv")
    return files


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """`accuracy/<method>/mean|std`, `accuracy/<method>/<target>/mean` and `paired/grasp_minus_<control>/mean`."""
    metrics: dict[str, float] = {}
    for method in ordered(rows, "method"):
        metrics[f"accuracy/{method}/mean"], metrics[f"accuracy/{method}/std"] = mean_std(
            list(accuracies(rows, method).values()))
        for target in ordered(rows, "target"):
            metrics[f"accuracy/{method}/{target}/mean"] = mean_std(list(accuracies(rows, method, target).values()))[0]
        if method != "grasp" and (diffs := paired_differences(rows, "grasp", method)):
            metrics[f"paired/grasp_minus_{method}/mean"] = mean_std(diffs)[0]
    return {key: value for key, value in metrics.items() if not math.isnan(value)}


def log_bench(rows: list[Row], files: dict[str, Path], params: Path, tracking_uri: str | None, wall_s: float,
              project: Path = Path("."), extra: dict[str, str] | None = None) -> str:
    """One MLflow run in experiment `grasp-bench` with the files as artifacts and the summary metrics.

    Args:
        tracking_uri: default: $MLFLOW_TRACKING_URI, else `sqlite:///<project>/mlflow.db`.
        project: the folder whose `mlflow.db` and `mlartifacts/` `grasp run` uses (artifacts of a new
            experiment on a local store go to `<project>/mlartifacts`).
        extra: more run params (the selection seeds and the method chosen on them).
    """
    from flows.runtime.settings import code_commit
    from flows.stores.tracking import Tracker
    from grasp_core.config import flatten, load_config

    tracker = Tracker(project, experiment="grasp-bench", tracking_uri=tracking_uri)
    config = {key: value for key, value in flatten(load_config(params)).items() if key != "seed"}  # bench.seeds
    bench = {**config, "bench.seeds": ",".join(map(str, ordered(rows, "seed"))),
             "bench.targets": ",".join(map(str, ordered(rows, "target"))),
             "bench.methods": ",".join(ordered(rows, "method")), **(extra or {})}
    with tracker.parent_run("bench-accuracy", bench, {"bench": "accuracy", "code_commit": code_commit()},
                            params_file=params) as run_id:
        tracker.log_metrics(run_id, {**summary_metrics(rows), "bench/wall_s": wall_s, "bench/runs": len(rows)})
        for path in files.values():
            tracker.client.log_artifact(run_id, str(path), "accuracy")
    return run_id


# ---------------------------------------------------------------------------------------------- CLI

def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench accuracy` to the `grasp bench` subparsers."""
    p = bench_sub.add_parser("accuracy", help="every domain as target x methods x seeds: accuracy table",
                             description="Each domain becomes the target in turn (all others are its sources); "
                             "every method runs on GRASP's target budget for each seed. Writes accuracy.csv/.md/"
                             ".png under --out and logs them as one MLflow run (experiment grasp-bench).")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to copy per seed")
    p.add_argument("--workdir", type=Path, default=Path(".cache/bench-accuracy"),
                   help="where seed-<s>/ workspaces keep data and checkpoints (re-used across runs)")
    p.add_argument("--select-seeds", default="0,1,2", help="seeds every method runs on first; the method with the "
                   "best validation accuracy there is reported as chosen ('none': no selection; default: 0,1,2)")
    p.add_argument("--seeds", default="3,4,5", help="confirmation seeds, disjoint from --select-seeds: the table "
                   "and the paired differences (default: 3,4,5)")
    p.add_argument("--targets", help="comma-separated target domains (default: every domain)")
    p.add_argument("--methods", help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})")
    add_source_order(p)
    p.add_argument("--out", type=Path, default=Path("results/accuracy"), help="folder for csv, md and png")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///<current directory>/mlflow.db)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_bench_accuracy)


def add_source_order(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-order", choices=SOURCE_ORDERS, default="given",
                   help="given: domains in their time order; reversed: the time order reversed; permuted: "
                   "shuffled by the seed (sources listed and dated so: does a method depend on how domains are "
                   "named?)")


def parse_list(text: str | None, flag: str, kind: type = str) -> list[Any] | None:
    """`"0,1,2"` -> `[0, 1, 2]` (None for None); a bad item is a GraspError naming the flag."""
    if text is None:
        return None
    try:
        items = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GraspError(f"{flag} '{text}': not a comma-separated list of {kind.__name__}; e.g. 0,1,2") from None
    if not items:
        raise GraspError(f"{flag} '{text}': empty; give at least one value")
    return items


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(Path.cwd())
    from flows.bench.protocol import check_seed_split, choose_on_val, command_line
    from flows.reports.progress import Progress
    from flows.reports.tables import write_json

    select = [] if args.select_seeds == "none" else parse_list(args.select_seeds, "--select-seeds", int) or []
    confirm = parse_list(args.seeds, "--seeds", int) or []
    check_seed_split(select, confirm)
    targets, methods, progress = parse_list(args.targets, "--targets"), parse_list(args.methods, "--methods"), \
        Progress(args.quiet)
    t0 = time.perf_counter()
    select_rows = run_accuracy_bench(args.params, args.workdir, select, targets, methods, progress,
                                     source_order=args.source_order) if select else []
    chosen = choose_on_val(select_rows, ordered(select_rows, "method")) if select_rows else ""
    rows = run_accuracy_bench(args.params, args.workdir, confirm, targets, methods, progress,
                              source_order=args.source_order)
    wall_s = time.perf_counter() - t0
    files = write_outputs(rows, args.out, wall_s, select_rows, chosen, command_line(args))
    run_id = log_bench(rows, files, args.params, args.tracking_uri, wall_s,
                       extra={"bench.select_seeds": ",".join(map(str, select)), "bench.chosen": chosen or "none"})
    print(files["md"].read_text())
    if args.json:
        write_json(rows, args.json)
        files["json"] = args.json
    print("wrote " + ", ".join(str(p) for p in files.values()) + f"; MLflow run {run_id} (experiment grasp-bench)")
    return 0
