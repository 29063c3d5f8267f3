"""Benchmarks that print figures (targets live here, not in timed tests)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flows.pipeline.up_to_date import NO_FLOW_RUN
from flows.runtime.options import json_file_args, positive_int

if TYPE_CHECKING:
    from flows.runtime.options import Subcommands


def _timed(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds of `grasp ARGS` in `cwd`, the 1-minute load average when it started, its stdout)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"`grasp {' '.join(args)}` failed in {cwd}:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0, load, out.stdout


PHASES = ("cold", "nothing_new", "warm")


def parse_phases(text: str) -> tuple[str, ...]:
    """`cold,warm` -> the phases to run, in PHASES order; `cold` is required (the others re-use its folder)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := [name for name in names if name not in PHASES]:
        raise ValueError(f"--phases: unknown phase '{unknown[0]}'; choose from {', '.join(PHASES)}")
    if "cold" not in names:
        raise ValueError("--phases: 'cold' is required (nothing_new and warm re-use the folder it fills)")
    return tuple(phase for phase in PHASES if phase in names)


def overhead(params: Path, keep: bool = False, repeat: int = 1,
             phases: tuple[str, ...] = PHASES) -> list[dict[str, object]]:
    """Wall time of the Prefect flow vs the core run on the same config, each in a fresh folder, in seconds.

    `cold`: the first `grasp run` of a workspace (data generated, sources trained, merge, registration);
    `nothing_new`: `grasp run` again with nothing new, which ends before Prefect, torch or MLflow load
    (flows/pipeline/up_to_date.py; `no_flow_run` counts the runs that did; the core engine has no such run: it
    always merges); `warm`: a run that re-uses data and sources and merges every source again (`--full`).
    Both engines run GRASP only (no baselines), as whole `grasp run` processes. With `repeat` > 1 the rounds
    alternate core and flow, and each figure is the median (the range is printed beside it): on a small shared
    machine one run varies by +-20 %. `overhead_s` (flow - core, medians) is what orchestration costs; the ratio
    is printed for reference only, since it moves with the core run itself (a faster core run raises it).
    `phases` (see parse_phases) cuts a long workload to its cold runs. Each row gives the 1-minute load
    average at the start of its runs (`load_1m`, min-max): on a shared machine the figures move with it.
    """
    root = Path(tempfile.mkdtemp(prefix="grasp-overhead-"))
    try:
        walls: dict[tuple[str, str], list[float]] = {}
        early: list[bool] = []
        loads: dict[str, list[float]] = {}
        for round_ in range(repeat):
            for engine, extra in (("core", ["--engine", "core", "--methods", "grasp"]), ("prefect", [])):
                ws = root / f"{engine}-{round_}"
                ws.mkdir()
                shutil.copy(params, ws / "params.yaml")
                for phase in phases:
                    if engine == "core" and phase == "nothing_new":
                        continue
                    # the warm flow merges from scratch again (--full): the same work as the core run's second call
                    again = ["--full"] if engine == "prefect" and phase == "warm" else []
                    wall, load, said = _timed(["run", "--quiet", *extra, *again], ws)
                    walls.setdefault((engine, phase), []).append(wall)
                    loads.setdefault(phase, []).append(load)
                    if phase == "nothing_new":  # how many of its runs ended before Prefect started
                        early.append(NO_FLOW_RUN in said)
        rows = [{**_row(phase, walls, repeat), "load_1m": f"{min(loads[phase]):.1f}-{max(loads[phase]):.1f}"}
                for phase in phases]
        for row in rows:
            if row["phase"] == "nothing_new":
                row["no_flow_run"] = f"{sum(early)}/{len(early)}"
        return rows
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _row(phase: str, walls: dict[tuple[str, str], list[float]], repeat: int) -> dict[str, object]:
    """One phase: medians in seconds, the orchestration cost, and the ranges when repeated."""
    flow = statistics.median(walls[("prefect", phase)])
    row: dict[str, object] = {"phase": phase, "flow_s": round(flow, 1)}
    if ("core", phase) in walls:
        core = statistics.median(walls[("core", phase)])
        row.update(core_s=round(core, 1), overhead_s=round(flow - core, 1), ratio=round(flow / core, 2))
    if repeat > 1:
        row["runs"] = repeat
        for engine, key in (("core", "core_range_s"), ("prefect", "flow_range_s")):
            if (engine, phase) in walls:
                row[key] = f"{min(walls[(engine, phase)]):.1f}-{max(walls[(engine, phase)]):.1f}"
    return row


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench overhead` to the bench sub-parsers."""
    over = bench_sub.add_parser("overhead", parents=[json_file_args()],
                                help="what orchestration costs, in seconds: flow vs core run",
                                description="Run `grasp run` with the core engine and with the Prefect flow "
                                "(GRASP only) as separate processes: cold (fresh folder), nothing new (the flow "
                                "again) and warm (every source merged again), and print the wall times and the "
                                "flow's overhead in seconds.")
    over.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to copy in")
    over.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                      help="rounds (core and flow alternate); prints medians and ranges (default 1)")
    over.add_argument("--phases", type=_phases_arg, default=PHASES, metavar="LIST",
                      help=f"comma-separated, 'cold' required (default {','.join(PHASES)}); a long workload "
                      "(--params params/workload-5min.yaml) may run its cold phase only")
    over.set_defaults(handler=cmd_bench_overhead)


def _phases_arg(text: str) -> tuple[str, ...]:
    try:
        return parse_phases(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--phases: ")) from None


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from flows.reports.tables import format_rows, write_json

    if args.repeat < 1:
        raise SystemExit(f"grasp bench overhead: --repeat {args.repeat}: must be 1 or more")
    rows = overhead(args.params.resolve(), repeat=args.repeat, phases=args.phases)
    print(format_rows(rows, tuple(dict.fromkeys(key for row in rows for key in row))))  # every row's columns
    if args.json:
        write_json(rows, args.json)
    return 0
