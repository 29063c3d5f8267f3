"""`grasp bench dask`: training the sources sequentially, on local threads and on a local Dask cluster.

All three train the same sources (params.yaml's config; the target's domain excluded) from the same base in
one temporary workspace, each into an empty `checkpoints/sources/`, and must write byte-identical
checkpoints (source training pins one torch thread on every runner, grasp_core/threads.py). The Dask
cluster's start (worker processes importing Prefect and torch) and the boot of Prefect's ephemeral API are
timed apart from the training, since an existing scheduler (`--runner dask=tcp://...`) or a cluster started
early does not pay them per run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def dask_bench(params: Path, say: Any) -> dict[str, Any]:
    """Wall times and checkpoint hashes of the three runners; see the module docstring."""
    from distributed import LocalCluster

    from flows.pipeline import train_sources
    from flows.runners import DASK_LOCAL_CLUSTER, api_url_exported
    from flows.workspace import (
        Workspace,
        ensure_base,
        ensure_source,
        layout_classes,
        materialise_data,
        resolve_roles,
        source_seed,
    )
    from grasp_core.config import load_config
    from grasp_core.data import input_shape

    root = Path(tempfile.mkdtemp(prefix="grasp-dask-bench-"))
    try:
        shutil.copy(params, root / "params.yaml")
        cfg, ws = load_config(root / "params.yaml"), Workspace(root)
        domains, _ = materialise_data(cfg, ws)
        classes = layout_classes(cfg, ws)
        _, sources = resolve_roles(cfg, domains)
        shape = input_shape(ws.data(cfg), sources[0], classes)
        base, _ = ensure_base(cfg, ws, classes, shape)
        say(f"data and base ready; training {len(sources)} sources three ways")

        def fresh() -> None:
            for path in ws.sources.glob("*.safetensors"):
                path.unlink()

        def hashes() -> dict[str, str]:
            from grasp_core.checkpoints import file_sha256

            return {p.stem: file_sha256(p) for p in sorted(ws.sources.glob("*.safetensors"))}

        out: dict[str, Any] = {"sources": len(sources), "epochs": cfg.sources.epochs}
        fresh()
        t0 = time.perf_counter()
        for name in sources:
            ensure_source(cfg, ws, name, classes, base, source_seed(cfg, domains, name))
        out["sequential_s"], seq = time.perf_counter() - t0, hashes()
        say(f"sequential: {out['sequential_s']:.1f}s")

        t0 = time.perf_counter()
        _warm_prefect()  # the first flow call of a process boots Prefect's ephemeral API: not training time
        out["prefect_start_s"] = time.perf_counter() - t0
        fresh()
        t0 = time.perf_counter()
        train_sources(cfg, ws, sources, domains, classes, base, "local")
        out["threads_s"], threads = time.perf_counter() - t0, hashes()
        say(f"local threads: {out['threads_s']:.1f}s")

        fresh()
        t0 = time.perf_counter()
        with api_url_exported(), LocalCluster(**DASK_LOCAL_CLUSTER) as cluster, cluster.get_client() as client:
            client.run(_warm_worker)  # workers import torch, Prefect and grasp once, as a long-lived cluster has
            out["dask_start_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            train_sources(cfg, ws, sources, domains, classes, base, f"dask={cluster.scheduler_address}")
            out["dask_train_s"] = time.perf_counter() - t1
        dask = hashes()
        say(f"dask: cluster start {out['dask_start_s']:.1f}s, training {out['dask_train_s']:.1f}s")
        out["identical_checkpoints"] = seq == threads == dask
        out["dask_vs_sequential"] = out["dask_train_s"] / out["sequential_s"]
        out["dask_with_start_vs_sequential"] = (out["dask_start_s"] + out["dask_train_s"]) / out["sequential_s"]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _warm_prefect() -> None:
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        return None

    warm_up()


def _warm_worker() -> None:
    import flows.tasks  # noqa: F401  (torch, prefect, grasp_core)


def format_dask(out: dict[str, Any]) -> str:
    return "\n".join([
        f"training {out['sources']} sources x {out['epochs']} epochs (2 CPU cores):",
        f"  sequential (one at a time)        {out['sequential_s']:7.1f} s",
        f"  local threads (2 at a time)       {out['threads_s']:7.1f} s",
        f"  Dask, 2 local workers             {out['dask_train_s']:7.1f} s   "
        f"(+ {out['dask_start_s']:.1f} s to start the cluster and import in the workers)",
        f"  (Prefect's ephemeral API boot, {out['prefect_start_s']:.1f} s, is excluded from every row)",
        f"  Dask / sequential: {out['dask_vs_sequential']:.2f} (training), "
        f"{out['dask_with_start_vs_sequential']:.2f} (with the cluster start); target <= 0.65",
        f"  identical checkpoints on all three runners: {out['identical_checkpoints']}",
    ])


def register(bench_sub: Any) -> None:
    """Add `grasp bench dask` to the `grasp bench` sub-parsers."""
    cmd = bench_sub.add_parser("dask", help="source training: sequential vs local threads vs a local Dask cluster",
                               description=__doc__)
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to run")
    cmd.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    cmd.add_argument("--quiet", action="store_true", help="no progress lines")
    cmd.set_defaults(handler=cmd_bench_dask)


def cmd_bench_dask(args: argparse.Namespace) -> int:
    from flows.progress import Progress
    from flows.report import write_json
    from flows.settings import apply_defaults

    apply_defaults(Path(tempfile.gettempdir()) / "grasp-dask-bench-home")
    out = dask_bench(args.params, Progress(args.quiet).say)
    print(format_dask(out))
    if args.json:
        write_json([out], args.json)
        print(f"wrote {args.json}")
    return 0 if out["identical_checkpoints"] else 1
