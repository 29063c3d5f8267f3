"""The `grasp` console script. Heavy libraries are imported inside commands, so --help is instant.

Exit codes (docs/operations.md): 0 done, 2 bad input (`grasp: error:` names the file, key or domain),
3 promotion refused, 4 `lineage --verify` found a mismatch, 75 busy or transient (the workspace lock is
held, a store stayed locked or full through its retries): try again later.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.ops.commands import EXIT_MISMATCH, EXIT_REFUSED
from flows.runtime.options import (
    RunOptions,
    dvc_args,
    json_file_args,
    lock_args,
    positive_int,
    progress_args,
    tracking_args,
    workspace_args,
)
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from flows.ops.prefect_server import ServerHandle
    from flows.runtime.options import Subcommands
    from grasp_core.config import LimitsConfig

EXIT_BAD_INPUT, EXIT_BUSY = 2, 75
__all__ = ["EXIT_BAD_INPUT", "EXIT_BUSY", "EXIT_MISMATCH", "EXIT_REFUSED", "build_parser", "main"]
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no space (or a file-size limit): transient, exit 75


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grasp")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(benches: bool = True) -> argparse.ArgumentParser:
    """The `grasp` parser; without `benches`, `bench` takes no sub-command (its modules' imports are left out:
    `main` registers them only when the command line names `bench`)."""
    parser = argparse.ArgumentParser(prog="grasp", description="GRASP: merge K source models into one target "
                                     "model with the memory of two (arXiv 2606.14900).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--version", action="version", version=f"grasp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[workspace_args(), progress_args(), tracking_args(model=False), dvc_args(),
                                         json_file_args("the table"), lock_args(0)],
                         help="train missing sources, run GRASP and the baselines, print a table",
                         description="Materialise the data, train the missing source models, run GRASP and the "
                         "baselines of params.yaml on the target, and print one row per method.")
    run.add_argument("--engine", choices=["prefect", "core"], default="prefect",
                     help="prefect (default): the operated pipeline (GX gate, DVC, MLflow registry); "
                     "core: plain Python, no orchestration, no tracking")
    run.add_argument("--baselines", action="store_true",
                     help="prefect engine: also run baselines.methods, each logged as its own MLflow run "
                     "(the core engine always runs them)")
    run.add_argument("--auto-promote", action="store_true",
                     help="prefect engine: run the promotion gate on the new challenger (see `grasp promote`)")
    run.add_argument("--full", action="store_true",
                     help="prefect engine: merge every source from scratch instead of starting from the champion")
    run.add_argument("--methods", help="comma-separated methods to run (default: grasp + baselines.methods)")
    run.add_argument("--runner", help="prefect engine: where source training fans out: local (threads, default), "
                     "dask (a local Dask cluster, 2 workers), dask=tcp://HOST:PORT (an existing scheduler); "
                     "default $GRASP_RUNNER, else local")
    run.add_argument("--all-targets", action="store_true",
                     help="prefect engine: every domain as the target in turn (leave-one-domain-out), each with "
                     "its own registered model grasp-<domain>; prints accuracy per target and method")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"],
                     help="where to compute (default: $GRASP_DEVICE, else auto: CUDA, then MPS, then CPU)")
    run.add_argument("--amp", action="store_true", help="bfloat16 mixed precision, CUDA only (or $GRASP_AMP=1)")
    run.add_argument("--threads", type=positive_int, metavar="N",
                     help="torch CPU threads for training and merging (default: $GRASP_THREADS, else "
                     "$OMP_NUM_THREADS, else the cores less one, left to DVC, MLflow and GX)")
    run.set_defaults(handler=cmd_run)

    data = sub.add_parser("data", parents=[workspace_args(), progress_args(), dvc_args()],
                          help="write the embedded benchmark (if missing) and list its domains; "
                          "`data import DIR` brings your own images",
                          description="Without an action: generate data/ from the embedded benchmark when it is "
                          "missing or stale, check its layout, and print the domains with image counts. "
                          "`grasp data import DIR`: read DIR/<domain>/{train,val,test}/<class>/ (Yearbook periods, "
                          "CLEAR bins) or DIR/<domain>/<class>/ (split stratified and seeded with data.val_frac and "
                          "data.test_frac), order the domains by data_import.order_by or data_import.order, write "
                          "one size and channel mode as PNG, pass the Great Expectations gate, swap the result into "
                          "data/ and DVC-track it. See docs/data.md.")
    data.add_argument("action", nargs="?", choices=["import"], help="import: bring your own images from DIR")
    data.add_argument("source", nargs="?", type=Path, metavar="DIR", help="the folder to import")
    data.add_argument("--replace", action="store_true", help="import: replace an existing data folder")
    data.add_argument("--no-dvc", action="store_true", help="import: do not DVC-track the imported folder")
    data.set_defaults(handler=cmd_data)
    add = sub.add_parser("add-source", parents=[dvc_args(), lock_args(60)],
                         help="validate a source checkpoint and add it to checkpoints/sources",
                         description="Check a safetensors checkpoint against the base (architecture, classes, "
                         "input shape, tensor shapes, finite values, header hash), copy it into "
                         "checkpoints/sources/<DOMAIN>.safetensors and DVC-track the sources. The next "
                         "`grasp run` merges it into the champion.")
    add.add_argument("path", type=Path, help="the .safetensors checkpoint")
    add.add_argument("--domain", required=True, help="the source's domain name (sorts in time order)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing source of that domain")
    add.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    add.add_argument("--params", type=Path, help="params.yaml whose `limits` cap the file (default: "
                     "<workdir>/params.yaml if present, else the built-in caps)")
    add.set_defaults(handler=cmd_add_source)

    from flows.ops import commands, deploy_cli

    commands.register(sub)
    deploy_cli.register(sub)

    bench = sub.add_parser("bench", help="benchmarks that print figures",
                           description="Benchmarks; each prints a table (and writes --json FILE if given).")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    if benches:
        _register_benches(bench_sub)
    return parser


def _register_benches(bench_sub: Subcommands) -> None:
    from flows.bench import ablation as bench_ablation
    from flows.bench import accuracy as bench_accuracy
    from flows.bench import cost as bench_cost
    from flows.bench import dask as bench_dask
    from flows.bench import deploy as bench_deploy
    from flows.bench import memory as bench_memory
    from flows.bench import overhead as bench_overhead
    from flows.bench import throughput as bench_throughput
    from flows.reports import accuracy_matrix

    bench_accuracy.register(bench_sub)
    bench_ablation.register(bench_sub)
    accuracy_matrix.register(bench_sub)
    bench_memory.register(bench_sub)
    bench_cost.register(bench_sub)
    bench_dask.register(bench_sub)
    bench_throughput.register(bench_sub)
    bench_deploy.register(bench_sub)
    bench_overhead.register(bench_sub)


def _limits(params: Path | None, workdir: Path) -> LimitsConfig:
    """`limits` of `params`, else of <workdir>/params.yaml when present, else the built-in caps."""
    from grasp_core.config import LimitsConfig, load_config

    path = params if params is not None else workdir / "params.yaml"
    return load_config(path).limits if params is not None or path.is_file() else LimitsConfig()


def cmd_add_source(args: argparse.Namespace) -> int:
    from grasp_core.names import check_name

    check_name(args.domain, "--domain")  # before anything is written, even the tool settings
    limits = _limits(args.params, args.workdir)
    from grasp_core.checkpoints import read_header

    read_header(args.path, limits)  # a malformed, edited or oversize file is refused before the lock is taken
    from flows.runtime.lock import RunLock

    with RunLock(args.workdir, wait_s=args.lock_wait, command="grasp add-source"):
        from flows.runtime.settings import apply_defaults

        apply_defaults(args.workdir)
        from flows.pipeline.sources import add_source
        from flows.pipeline.workspace import Workspace
        from flows.stores.versioning import ensure_repo, track

        saved = add_source(Workspace(args.workdir), args.path, args.domain, args.replace, limits)
        tracked = track(args.workdir, "checkpoints/sources",
                        first=ensure_repo(args.workdir, RunOptions.from_args(args).dvc_remote, defer=True))
    print(f"added {saved.path} (sha256 {saved.sha256[:12]}); DVC {tracked.path.name} {tracked.md5}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.runtime import execution

    opts = RunOptions.from_args(args)  # once: everything below reads where/how from it
    execution.apply_threads(opts.compute)  # torch's own setting (OMP_NUM_THREADS), before torch is imported
    if args.engine == "prefect":
        return _run_flow(args, opts)
    opts.compute.check()
    from flows.pipeline.core_run import core_run
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress
    from flows.reports.tables import format_table, result_row, write_json
    from grasp_core.config import load_config

    cfg = load_config(opts.params)
    methods = args.methods.split(",") if args.methods else None
    summary = core_run(cfg, Workspace(opts.workdir), Progress(opts.quiet, opts.verbose), methods, opts.compute)
    rows = [result_row(r, summary.target) for r in summary.results]
    print(f"target {summary.target} | sources {', '.join(summary.sources)} | wall {summary.wall_s:.1f}s")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


def _run_flow(args: argparse.Namespace, opts: RunOptions) -> int:
    from flows.pipeline.up_to_date import nothing_new, same_params_as_last_run
    from flows.runtime.interrupts import stop_cleanly_on_signals
    from flows.runtime.lock import RunLock
    from grasp_core.config import load_config

    # a bad params.yaml (or a policy/criterion no registry knows) is bad input: refused before the lock,
    # a server or any file. Params the last good run used (same hash, same code) passed that check then, and
    # the check's import (torch) is what a run with nothing new must not pay.
    cfg = load_config(opts.params)
    may_be_current = not (opts.full or args.all_targets) and same_params_as_last_run(opts, cfg)
    if not may_be_current:
        from grasp_core.grasp import check_plugins

        check_plugins(cfg)

    # The workspace lock first: a refused run starts no Prefect server (two on one SQLite only contend).
    # The flow takes the same lock again (re-entrant in this process; scheduled runs take it there).
    # SIGTERM/SIGINT unwind through the lock (released) before the children are stopped.
    command = "grasp run" + (" --all-targets" if args.all_targets else "")
    with stop_cleanly_on_signals(command), RunLock(opts.workdir, wait_s=args.lock_wait, command=command):
        # nothing new (docs/operations.md): said before Prefect, torch or the flow start; else the flow decides
        if may_be_current and (message := nothing_new(opts, cfg)) is not None:
            print(message)
            return 0
        return _run_flow_locked(args, opts)


def _run_flow_locked(args: argparse.Namespace, opts: RunOptions) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(opts.workdir, opts.verbose)
    from flows.runtime.runners import parse_runner

    spec = parse_runner(opts.runner)  # a bad --runner fails before any work
    from flows.ops.prefect_server import check_prefect_db, run_server, workspace_api

    # before prefect is imported: the workspace's running server (grasp serve's), one for Dask workers, or a
    # `prefect server start` of this run alone, launched now so that its boot overlaps the imports below
    server = workspace_api(opts.workdir, start=spec.kind == "dask")
    if server is None:
        check_prefect_db()  # a corrupt database is one line, not a server traceback
        server = run_server(opts.workdir)  # stopped at exit, after Prefect has sent it the last logs
    elif not server.started:
        server = None  # grasp serve's (or PREFECT_API_URL's): not ours to stop
    try:
        return _run_flow_on_api(args, opts, server)
    finally:
        if server is not None and server.record is not None:
            server.stop()  # a recorded server this run started (Dask's)


def _run_flow_on_api(args: argparse.Namespace, opts: RunOptions, server: ServerHandle | None) -> int:
    opts.compute.check()  # a bad --device/--amp fails before any work
    # while the server boots on the other core: torch, MLflow (every run opens the registry) and the pipeline
    import mlflow  # noqa: F401

    from flows.pipeline.plan import holds_all_line
    from flows.pipeline.run import run_pipeline
    from flows.reports.tables import COLUMNS, format_rows, stage_row, write_json

    if server is not None:
        from flows.runtime.warm import warm_while

        warm_while(server.booting)  # what the flow would import anyway, while this process would only wait
        server.wait_ready()

    if args.all_targets:
        return _run_all_targets(args, opts)
    summary = run_pipeline(opts, baselines=args.baselines, auto_promote=args.auto_promote)
    if not summary.versions and summary.resumed:
        print(f"resumed: v{summary.parent_version} of {summary.model_name} already held every stage of the "
              f"interrupted run; aliases {', '.join(summary.aliases)} -> v{summary.parent_version}")
        return 0
    if not summary.versions:
        print(f"{holds_all_line(summary.champion, summary.parent_version, summary.merged_before, summary.model_name)}"
              "; nothing registered")
        return 0
    if summary.resumed:
        print(f"resumed an interrupted run: merged {len(summary.versions)} remaining source(s) into "
              f"v{summary.parent_version}")
    elif summary.parent_version:
        onto = "champion" if summary.parent_version == summary.champion else "challenger"  # awaiting promotion
        print(f"incremental: merged {len(summary.versions)} new source(s) into {onto} v{summary.parent_version}")
    stages = [stage_row(step, version) for step, version in zip(summary.steps, summary.versions, strict=True)]
    print(f"target {summary.target} | registered model {summary.model_name} versions "
          f"{', '.join(summary.versions)} | aliases {', '.join(summary.aliases)} -> v{summary.aliases_version}")
    print(format_rows(stages))
    if summary.methods:
        print(format_rows(summary.methods, COLUMNS))
    print(f"lineage plot: {summary.report} (also an MLflow artifact of v{summary.versions[-1]}'s run)")
    if summary.report_html:
        print(f"run report: {summary.report_html}")
    if summary.promotion:
        print(summary.promotion)
    if args.json:
        write_json(summary.methods or stages, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir, args.verbose)
    from flows.pipeline.data_import import import_data, summary_lines
    from flows.pipeline.workspace import Workspace
    from grasp_core.config import load_config

    cfg = load_config(args.params)
    result = import_data(args.source, cfg, Workspace(args.workdir), replace=args.replace,
                         dvc_remote=RunOptions.from_args(args).dvc_remote,
                         track_data=not args.no_dvc)
    print("\n".join(summary_lines(result, cfg)))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "import":
        if args.source is None:
            raise GraspError("data import: give the folder to import, e.g. `grasp data import ~/yearbook`")
        return cmd_data_import(args)
    if args.source is not None:
        raise GraspError(f"data: unexpected argument '{args.source}'; did you mean `grasp data import {args.source}`?")
    from flows.pipeline.workspace import Workspace, layout_classes, materialise_data
    from grasp_core.config import load_config
    from grasp_core.data import SPLITS

    cfg = load_config(args.params)
    ws = Workspace(args.workdir)
    domains, generated = materialise_data(cfg, ws)
    classes = layout_classes(cfg, ws)
    root = ws.data(cfg)
    print(f"{root}: {len(domains)} domains, {len(classes)} classes{' (generated now)' if generated else ''}")
    for domain in domains:
        counts = [sum(1 for _ in (root / domain / s).rglob("*.png")) for s in SPLITS]
        print(f"  {domain}: " + ", ".join(f"{s} {n}" for s, n in zip(SPLITS, counts, strict=False)))
    return 0


def _run_all_targets(args: argparse.Namespace, opts: RunOptions) -> int:
    from flows.pipeline.run import all_targets_rows, run_all_targets
    from flows.reports.tables import format_rows, write_json

    if args.auto_promote:
        raise GraspError("--all-targets: --auto-promote is not supported; promote each grasp-<domain> model "
                         "with `grasp promote --model grasp-<domain>`")
    summaries = run_all_targets(opts, baselines=args.baselines)
    rows = all_targets_rows(summaries)
    print(f"leave-one-domain-out: {len(summaries)} targets, models "
          f"{', '.join(s.model_name for s in summaries)}")
    print(format_rows(rows, ("target", "method", "test_accuracy", "val_accuracy", "target_steps",
                             "peak_models_alive", "version", "note")))
    grasp_rows = [r for r in rows if r.get("method") == "grasp" and "test_accuracy" in r]
    if grasp_rows:
        mean = sum(r["test_accuracy"] for r in grasp_rows) / len(grasp_rows)
        print(f"GRASP mean test accuracy over {len(grasp_rows)} targets: {mean:.4f}")
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(benches="bench" in words).parse_args(argv)
    try:
        return int(args.handler(args))
    except GraspError as err:
        if args.debug:
            raise
        print(f"grasp: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in _FULL or args.debug:
            raise
        # a write that found no space, outside a store task's own retries: name the file, keep what is done
        print(f"grasp: error: {err.filename or 'a file'}: {os.strerror(err.errno)}; free space there and run "
              "again (finished steps stay registered and the next run resumes)", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
