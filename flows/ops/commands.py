"""The registry and scheduling commands: `grasp serve`, `promote`, `lineage`, `restore`, `status` (argument
parsing and printing only; the work is in their modules)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from flows.runtime.options import dvc_args, lock_args, ops_parents, tracking_args, workspace_args

if TYPE_CHECKING:
    from flows.runtime.options import Subcommands

EXIT_REFUSED, EXIT_MISMATCH = 3, 4  # docs/operations.md: promotion refused, `lineage --verify` found a mismatch


def register(sub: Subcommands) -> None:
    """Add the commands to the top-level sub-parsers (`sub`, from `add_subparsers`)."""
    serve = sub.add_parser("serve", parents=[workspace_args(), tracking_args(model=False), dvc_args(), lock_args(900)],
                           help="serve the pipeline on a schedule (a Prefect deployment)",
                           description="Serve a Prefect deployment of `grasp run` with a cron or interval schedule "
                           "from this process. Without PREFECT_API_URL it starts (or re-uses) a local Prefect "
                           "server for this workspace, prints its UI address, and stops what it started on exit "
                           "(Ctrl-C or SIGTERM). Runs are incremental and never overlap.")
    when = serve.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron expression in UTC, e.g. "0 3 * * *"')
    when.add_argument("--interval", type=int, metavar="SECONDS", help="run every SECONDS seconds")
    serve.add_argument("--auto-promote", action="store_true", help="run the promotion gate after each run")
    serve.add_argument("--name", default="grasp-scheduled", help="deployment name (default: grasp-scheduled)")
    serve.set_defaults(handler=cmd_serve)

    promote = sub.add_parser("promote", parents=[*ops_parents(), lock_args(60)],
                             help="promote a version to champion through the accuracy/size gate",
                             description="The candidate (default @challenger) becomes champion only if its "
                             "validation accuracy on the current dataset is at least the champion's minus "
                             "promote.tolerance (and its size within promote.max_param_mb). Every decision is recorded "
                             "on both versions (tag promotion_history). Test accuracy is recorded, never gating. "
                             "Exit 0 promoted or no-op, 3 refused, 75 busy.")
    promote.add_argument("version", nargs="?", default="@challenger", help="a version number or @alias")
    promote.add_argument("--auto", action="store_true", help="record the decision as made by the scheduler")
    promote.set_defaults(handler=cmd_promote)

    lineage = sub.add_parser("lineage", parents=ops_parents(),
                             help="the chain of a version back to the first source",
                             description="Per version: source merged, tensors transferred, val/test accuracy, "
                             "memory, checkpoint/dataset/params hashes, code commit, flow run, promotions.")
    lineage.add_argument("ref", nargs="?", default="@champion", help="a version number or @alias")
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lineage.add_argument("--verify", action="store_true",
                         help="re-hash the DVC-tracked files and flag any that no longer match (exit 4 if any)")
    lineage.add_argument("--plot", type=Path, metavar="PNG", help="write accuracy/memory along the lineage here")
    lineage.set_defaults(handler=cmd_lineage)

    restore = sub.add_parser("restore", parents=ops_parents(),
                             help="bring back the exact data and source checkpoints of a version",
                             description="Put back the .dvc pointer files the version's MLflow run keeps and "
                             "materialise them with `dvc pull` (DVC cache, else remote). Into the workspace "
                             "(default), `grasp lineage VERSION --verify` then passes; --to DIR makes DIR a DVC "
                             "project of its own that shares the workspace's cache and remote.")
    restore.add_argument("ref", help="a version number or @alias")
    restore.add_argument("--to", type=Path, metavar="DIR", help="restore into DIR instead of the workspace")
    restore.set_defaults(handler=cmd_restore)

    status = sub.add_parser("status", parents=ops_parents(),
                            help="champion, challenger, recent runs, sources waiting")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(handler=cmd_status)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.scheduling import serve_pipeline
    from flows.runtime.options import RunOptions

    opts = RunOptions.from_args(args)  # the user's GRASP_* defaults become the served runs' parameters
    serve_pipeline(args.workdir.resolve(), args.params.resolve(), cron=args.cron, interval_s=args.interval,
                   auto_promote=args.auto_promote, tracking_uri=args.tracking_uri, deployment_name=args.name,
                   dvc_remote=opts.dvc_remote, lock_wait_s=args.lock_wait, compute=opts.compute)
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
