"""`grasp bench dask`: training the sources sequentially, on local threads and on a local Dask cluster.

All runners train the same sources (params.yaml's config; the target's domain excluded) from the same base in
one temporary workspace, each into an empty `checkpoints/sources/`, and must write byte-identical
checkpoints (source training pins one torch thread on every runner, grasp_core/threads.py). The Dask
cluster's start (worker processes importing Prefect and torch) and the boot of the local Prefect API server
(the `prefect server start` of `grasp run --runner dask`, flows/scheduling.workspace_api) are timed apart from
the training, since an existing scheduler (`--runner dask=tcp://...`) or a cluster started early does not pay
them per run. A last row trains the same sources on the same workers as plain Dask tasks, without Prefect
around them: what two processes give on this machine, the ceiling for the Dask row.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

    from flows.ops.prefect_server import ServerHandle
    from flows.runtime.options import Subcommands


def dask_bench(params: Path, say: Callable[[str], None], repeat: int = 1,
               server: ServerHandle | None = None) -> dict[str, Any]:
    """Wall times and checkpoint hashes of every runner; see the module docstring.

    With `repeat` > 1 each round runs them all in turn (a fresh Dask cluster per round, started before its
    timing) and every figure is the median, with its range: one run varies by +-20 % on a small shared box.
    `server`: the workspace's Prefect server (flows.ops.prefect_server.workspace_api), started before Prefect
    was imported.
    """
    from distributed import LocalCluster

    from flows.pipeline.fanout import train_sources
    from flows.pipeline.workspace import (
        Workspace,
        ensure_base,
        ensure_source,
        layout_classes,
        materialise_data,
        resolve_roles,
        source_seed,
    )
    from flows.runtime.runners import DASK_LOCAL_CLUSTER, RunnerSpec, fanout_environment
    from grasp_core.checkpoints import file_sha256
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
        say(f"data and base ready; training {len(sources)} sources on each runner, {repeat} round(s)")

        walls: dict[str, list[float]] = {"sequential": [], "threads": [], "dask_train": [], "dask_bare": [],
                                         "dask_start": []}
        digests: list[dict[str, str]] = []
        jobs = [(cfg, ws, name, classes, base, source_seed(cfg, domains, name)) for name in sources]

        def timed(key: str, train: Callable[[], object]) -> None:
            """Train every source from scratch with `train`; its wall time and the checkpoints' hashes."""
            for path in ws.sources.glob("*.safetensors"):
                path.unlink()
            t0 = time.perf_counter()
            train()
            walls[key].append(time.perf_counter() - t0)
            digests.append({p.stem: file_sha256(p) for p in sorted(ws.sources.glob("*.safetensors"))})

        t0 = time.perf_counter()
        _warm_prefect()  # the first flow call of a process sets Prefect up: not training time either
        prefect_start = time.perf_counter() - t0
        for round_ in range(1, repeat + 1):
            timed("sequential", lambda: [ensure_source(*job) for job in jobs])
            timed("threads", partial(train_sources, cfg, ws, sources, domains, classes, base, "local"))
            t0 = time.perf_counter()
            with fanout_environment(RunnerSpec("dask")), LocalCluster(**DASK_LOCAL_CLUSTER) as cluster, \
                    cluster.get_client() as client:
                # in each worker's task thread, as a long-lived cluster has done before
                workers = list(client.scheduler_info()["workers"])
                client.gather([client.submit(_warm_worker, workers=[w], pure=False) for w in workers])
                walls["dask_start"].append(time.perf_counter() - t0)
                timed("dask_train", partial(train_sources, cfg, ws, sources, domains, classes, base,
                                            f"dask={cluster.scheduler_address}"))
                # the same training on the same workers without Prefect: what 2 processes give on this machine
                timed("dask_bare", partial(_bare_dask, client, jobs))
            say(f"round {round_}/{repeat}: sequential {walls['sequential'][-1]:.1f}s, local threads "
                f"{walls['threads'][-1]:.1f}s, dask {walls['dask_train'][-1]:.1f}s "
                f"(+ {walls['dask_start'][-1]:.1f}s cluster start), dask without Prefect {walls['dask_bare'][-1]:.1f}s")
        out: dict[str, Any] = {"sources": len(sources), "epochs": cfg.sources.epochs, "runs": repeat,
                               "prefect_start_s": round(prefect_start, 1)}
        for key, values in walls.items():
            out[f"{key}_s"] = round(statistics.median(values), 2)
            out[f"{key}_range_s"] = [round(min(values), 2), round(max(values), 2)]
        out["identical_checkpoints"] = all(d == digests[0] for d in digests) and len(digests[0]) == len(sources)
        out["dask_vs_sequential"] = out["dask_train_s"] / out["sequential_s"]
        out["dask_bare_vs_sequential"] = out["dask_bare_s"] / out["sequential_s"]
        out["dask_with_start_vs_sequential"] = (out["dask_start_s"] + out["dask_train_s"]) / out["sequential_s"]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bare_dask(client: Client, jobs: list[tuple[Any, ...]]) -> None:
    """`ensure_source` of every job as a plain Dask task (no Prefect task run around it)."""
    from flows.pipeline.workspace import ensure_source

    client.gather([client.submit(ensure_source, *job, pure=False) for job in jobs])


def _warm_prefect() -> None:
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        return None

    warm_up()


def _warm_worker() -> None:
    """What a long-lived worker has done before: imported torch, Prefect and grasp, and run a Prefect task
    (its first one sets up Prefect's API client, ~1.5 s measured)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    import flows.pipeline.tasks  # noqa: F401  (torch, prefect, grasp_core)

    @task(name="bench-warm-up", cache_policy=NO_CACHE, persist_result=False)
    def warm_up() -> None:
        return None

    warm_up()


def format_dask(out: dict[str, Any]) -> str:
    def fig(key: str) -> str:
        low, high = out[f"{key}_range_s"]
        spread = f"  ({low:.1f}-{high:.1f})" if out["runs"] > 1 else ""
        return f"{out[f'{key}_s']:7.1f} s{spread}"

    runs = f", median of {out['runs']} rounds" if out["runs"] > 1 else ""
    return "\n".join([
        f"training {out['sources']} sources x {out['epochs']} epochs (2 CPU cores{runs}):",
        f"  sequential (one at a time)        {fig('sequential')}",
        f"  local threads (2 at a time)       {fig('threads')}",
        f"  Dask, 2 local workers             {fig('dask_train')}",
        f"    + cluster start and imports in the workers {fig('dask_start')}",
        f"  the same workers without Prefect  {fig('dask_bare')}   (this machine's ceiling for 2 processes)",
        f"  (the local Prefect API server's boot, {out['prefect_start_s']:.1f} s, is excluded from every row)",
        f"  Dask / sequential: {out['dask_vs_sequential']:.2f} (training), "
        f"{out['dask_with_start_vs_sequential']:.2f} (with the cluster start); target <= 0.65",
        f"  Dask without Prefect / sequential: {out['dask_bare_vs_sequential']:.2f}",
        f"  identical checkpoints on every runner and round: {out['identical_checkpoints']}",
    ])


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench dask` to the `grasp bench` sub-parsers."""
    from flows.runtime.options import bench_output_args, positive_int

    cmd = bench_sub.add_parser("dask", parents=[bench_output_args("the figures")],
                               help="source training: sequential vs local threads vs a local Dask cluster",
                               description=__doc__)
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to run")
    cmd.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                     help="rounds of every runner; figures are medians (default 1)")
    cmd.set_defaults(handler=cmd_bench_dask)


def cmd_bench_dask(args: argparse.Namespace) -> int:
    from flows.reports.progress import Progress
    from flows.reports.tables import write_json
    from flows.runtime.settings import apply_defaults

    home = Path(tempfile.gettempdir()) / "grasp-dask-bench-home"
    apply_defaults(home)
    from flows.ops.prefect_server import workspace_api

    server = workspace_api(home, start=True)  # the same server as `grasp run --runner dask`, before Prefect
    try:
        out = dask_bench(args.params, Progress(args.quiet).say, args.repeat, server)
    finally:
        if server is not None:
            server.stop()
    print(format_dask(out))
    if args.json:
        write_json([out], args.json)
        print(f"wrote {args.json}")
    return 0 if out["identical_checkpoints"] else 1
