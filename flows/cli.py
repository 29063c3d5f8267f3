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

from flows.runtime.options import positive_int
from grasp_core.errors import GraspError

EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_MISMATCH, EXIT_BUSY = 2, 3, 4, 75
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no space (or a file-size limit): transient, exit 75


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _lock_wait(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument("--lock-wait", type=seconds, default=default, metavar="SECONDS",
                        help=f"wait this long for another grasp command holding the workspace, then exit 75 "
                        f"(default {default:g})")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grasp")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="project folder holding data/ and checkpoints/ (default: current directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--verbose", action="store_true", help="a progress line for every epoch")


def _ops_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    parser.add_argument("--model", help="registered model name (default: the only grasp-* model)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<workdir>/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grasp", description="GRASP: merge K source models into one target "
                                     "model with the memory of two (arXiv 2606.14900).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--version", action="version", version=f"grasp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train missing sources, run GRASP and the baselines, print a table",
                         description="Materialise the data, train the missing source models, run GRASP and the "
                         "baselines of params.yaml on the target, and print one row per method.")
    _common(run)
    run.add_argument("--json", type=Path, metavar="FILE", help="also write the table as a JSON list of objects")
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
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                     "sqlite:///<workdir>/mlflow.db)")
    run.add_argument("--dvc-remote", help="DVC remote URL or folder (default: $GRASP_DVC_REMOTE, else "
                     "<workdir>/.dvc-remote)")
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
    _lock_wait(run, 0)
    run.add_argument("--threads", type=positive_int, metavar="N",
                     help="torch CPU threads for training and merging (default: $GRASP_THREADS, else "
                     "$OMP_NUM_THREADS, else the cores less one, left to DVC, MLflow and GX)")
    run.set_defaults(handler=cmd_run)

    data = sub.add_parser("data", help="write the embedded benchmark (if missing) and list its domains; "
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
    data.add_argument("--dvc-remote", help="import: DVC remote (default: $GRASP_DVC_REMOTE, else .dvc-remote)")
    _common(data)
    data.set_defaults(handler=cmd_data)
    add = sub.add_parser("add-source", help="validate a source checkpoint and add it to checkpoints/sources",
                         description="Check a safetensors checkpoint against the base (architecture, classes, "
                         "input shape, tensor shapes, finite values, header hash), copy it into "
                         "checkpoints/sources/<DOMAIN>.safetensors and DVC-track the sources. The next "
                         "`grasp run` merges it into the champion.")
    add.add_argument("path", type=Path, help="the .safetensors checkpoint")
    add.add_argument("--domain", required=True, help="the source's domain name (sorts in time order)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing source of that domain")
    add.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    add.add_argument("--dvc-remote", help="DVC remote (default: $GRASP_DVC_REMOTE, else <workdir>/.dvc-remote)")
    add.add_argument("--params", type=Path, help="params.yaml whose `limits` cap the file (default: "
                     "<workdir>/params.yaml if present, else the built-in caps)")
    _lock_wait(add, 60)
    add.set_defaults(handler=cmd_add_source)

    serve = sub.add_parser("serve", help="serve the pipeline on a schedule (a Prefect deployment)",
                           description="Serve a Prefect deployment of `grasp run` with a cron or interval schedule "
                           "from this process. Without PREFECT_API_URL it starts (or re-uses) a local Prefect "
                           "server for this workspace, prints its UI address, and stops what it started on exit "
                           "(Ctrl-C or SIGTERM). Runs are incremental and never overlap.")
    when = serve.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron expression in UTC, e.g. "0 3 * * *"')
    when.add_argument("--interval", type=int, metavar="SECONDS", help="run every SECONDS seconds")
    serve.add_argument("--auto-promote", action="store_true", help="run the promotion gate after each run")
    serve.add_argument("--name", default="grasp-scheduled", help="deployment name (default: grasp-scheduled)")
    serve.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to use")
    serve.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    serve.add_argument("--tracking-uri", help="MLflow tracking URI for the runs")
    serve.add_argument("--dvc-remote", help="DVC remote for the runs")
    _lock_wait(serve, 900)
    serve.set_defaults(handler=cmd_serve)

    promote = sub.add_parser("promote", help="promote a version to champion through the accuracy/size gate",
                             description="The candidate (default @challenger) becomes champion only if its "
                             "validation accuracy on the current dataset is at least the champion's minus "
                             "promote.tolerance (and its size within promote.max_param_mb). Every decision is recorded "
                             "on both versions (tag promotion_history). Test accuracy is recorded, never gating. "
                             "Exit 0 promoted or no-op, 3 refused, 75 busy.")
    promote.add_argument("version", nargs="?", default="@challenger", help="a version number or @alias")
    promote.add_argument("--auto", action="store_true", help="record the decision as made by the scheduler")
    _lock_wait(promote, 60)
    _ops_args(promote)
    promote.set_defaults(handler=cmd_promote)

    lineage = sub.add_parser("lineage", help="the chain of a version back to the first source",
                             description="Per version: source merged, tensors transferred, val/test accuracy, "
                             "memory, checkpoint/dataset/params hashes, code commit, flow run, promotions.")
    lineage.add_argument("ref", nargs="?", default="@champion", help="a version number or @alias")
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lineage.add_argument("--verify", action="store_true",
                         help="re-hash the DVC-tracked files and flag any that no longer match (exit 4 if any)")
    lineage.add_argument("--plot", type=Path, metavar="PNG", help="write accuracy/memory along the lineage here")
    _ops_args(lineage)
    lineage.set_defaults(handler=cmd_lineage)

    restore = sub.add_parser("restore", help="bring back the exact data and source checkpoints of a version",
                             description="Put back the .dvc pointer files the version's MLflow run keeps and "
                             "materialise them with `dvc pull` (DVC cache, else remote). Into the workspace "
                             "(default), `grasp lineage VERSION --verify` then passes; --to DIR makes DIR a DVC "
                             "project of its own that shares the workspace's cache and remote.")
    restore.add_argument("ref", help="a version number or @alias")
    restore.add_argument("--to", type=Path, metavar="DIR", help="restore into DIR instead of the workspace")
    _ops_args(restore)
    restore.set_defaults(handler=cmd_restore)

    status = sub.add_parser("status", help="champion, challenger, recent runs, sources waiting")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _ops_args(status)
    status.set_defaults(handler=cmd_status)
    from flows.ops import deploy_cli
    deploy_cli.register(sub, _ops_args)

    bench = sub.add_parser("bench", help="benchmarks that print figures",
                           description="Benchmarks; each prints a table (and writes --json FILE if given).")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    over = bench_sub.add_parser("overhead", help="what orchestration costs, in seconds: flow vs core run",
                                description="Run `grasp run` with the core engine and with the Prefect flow "
                                "(GRASP only) as separate processes: cold (fresh folder), nothing new (the flow "
                                "again) and warm (every source merged again), and print the wall times and the "
                                "flow's overhead in seconds.")
    over.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to copy in")
    over.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                      help="rounds (core and flow alternate); prints medians and ranges (default 1)")
    over.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    over.set_defaults(handler=cmd_bench_overhead)
    from flows.bench import ablation as bench_ablation
    from flows.bench import accuracy as bench_accuracy
    from flows.bench import cost as bench_cost
    from flows.bench import dask as bench_dask
    from flows.bench import deploy as bench_deploy
    from flows.bench import memory as bench_memory
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
    return parser


def _limits(params: Path | None, workdir: Path):  # type: ignore[no-untyped-def]
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
                        first=ensure_repo(args.workdir, args.dvc_remote, defer=True))
    print(f"added {saved.path} (sha256 {saved.sha256[:12]}); DVC {tracked.path.name} {tracked.md5}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.scheduling import serve_pipeline

    serve_pipeline(args.workdir.resolve(), args.params.resolve(), cron=args.cron, interval_s=args.interval,
                   auto_promote=args.auto_promote, tracking_uri=args.tracking_uri, deployment_name=args.name,
                   dvc_remote=args.dvc_remote, lock_wait_s=args.lock_wait)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.pipeline.promotion import promote
    from flows.runtime.lock import RunLock
    from grasp_core.config import load_config

    cfg = load_config(args.params)
    with RunLock(args.workdir, wait_s=args.lock_wait, command="grasp promote"):  # no alias moves under a run
        decision = promote(args.workdir, args.tracking_uri, cfg, args.version, auto=args.auto, model_name=args.model)
    print(decision.message)
    return EXIT_REFUSED if decision.action == "refused" else 0


def cmd_lineage(args: argparse.Namespace) -> int:
    import json

    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.lineage import format_findings, format_lineage, verify_lineage
    from flows.stores.registry import lineage

    rows = lineage(args.workdir, args.tracking_uri, args.ref, args.model)
    findings = verify_lineage(args.workdir, rows) if args.verify else []
    if args.json:
        print(json.dumps({"lineage": rows, "findings": findings} if args.verify else rows, indent=2, default=str))
    else:
        print(format_lineage(rows))
        if args.verify:
            print(format_findings(findings, rows))
    if args.plot:
        from flows.reports.lineage_plot import lineage_plot

        print(f"wrote {lineage_plot(rows, args.plot)}")
    return EXIT_MISMATCH if findings else 0


def cmd_restore(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.restore import restore

    done = restore(args.workdir, args.tracking_uri, args.ref, args.model, args.to)
    print(f"restored {done.model_name} v{done.version} into {done.dest}: "
          + ", ".join(f"{p} {md5}" for p, md5 in done.hashes.items()))
    if args.to is None:
        print(f"check it with `grasp lineage {done.version} --verify`")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.status import format_status, status

    report = status(args.workdir, args.tracking_uri, args.model)
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 0


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from flows.bench.overhead import overhead
    from flows.reports.tables import format_rows, write_json

    if args.repeat < 1:
        raise SystemExit(f"grasp bench overhead: --repeat {args.repeat}: must be 1 or more")
    rows = overhead(args.params.resolve(), repeat=args.repeat)
    print(format_rows(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.runtime import execution
    execution.apply(args.device, args.amp, args.threads)
    if args.engine == "prefect":
        return _run_flow(args)
    execution.check()
    from flows.pipeline.core_run import core_run
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress
    from flows.reports.tables import format_table, result_row, write_json
    from grasp_core.config import load_config

    cfg = load_config(args.params)
    methods = args.methods.split(",") if args.methods else None
    summary = core_run(cfg, Workspace(args.workdir), Progress(args.quiet, args.verbose), methods)
    rows = [result_row(r, summary.target) for r in summary.results]
    print(f"target {summary.target} | sources {', '.join(summary.sources)} | wall {summary.wall_s:.1f}s")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


def _run_flow(args: argparse.Namespace) -> int:
    from flows.runtime.interrupts import stop_cleanly_on_signals
    from flows.runtime.lock import RunLock

    # The workspace lock first: a refused run starts no Prefect server (two on one SQLite only contend).
    # The flow takes the same lock again (re-entrant in this process; scheduled runs take it there).
    # SIGTERM/SIGINT unwind through the lock (released) before the children are stopped.
    command = "grasp run" + (" --all-targets" if args.all_targets else "")
    with stop_cleanly_on_signals(command), RunLock(args.workdir, wait_s=args.lock_wait, command=command):
        return _run_flow_locked(args)


def _run_flow_locked(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir, args.verbose)
    from flows.runtime.runners import parse_runner

    spec = parse_runner(args.runner)  # a bad --runner fails before any work
    from flows.ops.scheduling import check_prefect_db, workspace_api

    # before prefect is imported: the workspace's running server (grasp serve's), one for Dask workers, or none
    # (Prefect's ephemeral mode, on the workspace's database: a corrupt one is one line, not a server traceback)
    server = workspace_api(args.workdir, start=spec.kind == "dask")
    if server is None:
        check_prefect_db()
    try:
        return _run_flow_on_api(args)
    finally:
        if server is not None:
            server.stop()  # only a server this run started


def _run_flow_on_api(args: argparse.Namespace) -> int:
    from flows.runtime import execution
    execution.check()  # a bad --device/--amp fails before any work
    from flows.pipeline.run import run_pipeline
    from flows.reports.tables import COLUMNS, format_rows, stage_row, write_json

    if args.all_targets:
        return _run_all_targets(args)
    summary = run_pipeline(args.params, args.workdir, baselines=args.baselines, tracking_uri=args.tracking_uri,
                           dvc_remote=args.dvc_remote, full=args.full, auto_promote=args.auto_promote, quiet=args.quiet,
                           verbose=args.verbose, runner=args.runner)
    if not summary.versions and summary.resumed:
        print(f"resumed: v{summary.parent_version} of {summary.model_name} already held every stage of the "
              f"interrupted run; aliases {', '.join(summary.aliases)} -> v{summary.parent_version}")
        return 0
    if not summary.versions:
        print(f"nothing new: champion v{summary.parent_version} of {summary.model_name} already holds all "
              f"{summary.merged_before} sources; nothing registered")
        return 0
    if summary.resumed:
        print(f"resumed an interrupted run: merged {len(summary.versions)} remaining source(s) into "
              f"v{summary.parent_version}")
    elif summary.parent_version:
        print(f"incremental: merged {len(summary.versions)} new source(s) into champion v{summary.parent_version}")
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
    result = import_data(args.source, cfg, Workspace(args.workdir), replace=args.replace, dvc_remote=args.dvc_remote,
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


def _run_all_targets(args: argparse.Namespace) -> int:
    from flows.pipeline.run import all_targets_rows, run_all_targets
    from flows.reports.tables import format_rows, write_json

    if args.auto_promote:
        raise GraspError("--all-targets: --auto-promote is not supported; promote each grasp-<domain> model "
                         "with `grasp promote --model grasp-<domain>`")
    summaries = run_all_targets(args.params, args.workdir, baselines=args.baselines, tracking_uri=args.tracking_uri,
                                dvc_remote=args.dvc_remote, full=args.full, quiet=args.quiet, verbose=args.verbose,
                                runner=args.runner)
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
    args = build_parser().parse_args(argv)
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
