"""`grasp bench deploy`: one registered version in each deployment format (PyTorch safetensors, TorchScript,
ONNX): file size, peak RSS of a fresh process that loads it and predicts, p50/p95 CPU latency at batch 1 and
32, and parity with PyTorch on the target's test split.

Each format runs in its own fresh process (flows/bench/deploy_probe.py) with the same thread count, so the RSS is
that runtime's alone and no runtime inherits another's warm caches or thread pools.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.bench.deploy_probe import BATCHES
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from flows.runtime.options import Subcommands

COLUMNS = ("format", "file_bytes", "peak_rss_mb", "load_s", "p50_ms_b1", "p95_ms_b1", "p50_ms_b32", "p95_ms_b32",
           "max_abs_logit_diff", "agreement_frac")
_LATENCIES = tuple(f"p{q}_ms_b{b}" for b in BATCHES for q in (50, 95))
_ROOT = Path(__file__).resolve().parents[2]  # the probe imports this checkout's flows, whatever is installed


def _probe(fmt: str, path: Path, images: Path, iters: int, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(_ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "flows.bench.deploy_probe", fmt, str(path), str(images), str(iters),
                           str(threads)], capture_output=True, text=True, env=env, cwd=_ROOT)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GraspError(f"bench deploy: the {fmt} probe process failed ({tail}); rerun with that format alone "
                         "via python -m flows.bench.deploy_probe to see the traceback")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _files(fetched: Any, tmp: Path) -> dict[str, Path]:
    from flows.ops.export import write_export

    shape = fetched.header.input_shape
    return {"pytorch": tmp / "weights.safetensors",
            "torchscript": write_export(fetched.model, shape, "torchscript", tmp / "model.pt"),
            "onnx": write_export(fetched.model, shape, "onnx", tmp / "model.onnx")}


def deploy_bench(ws: Path, tracking_uri: str | None, cfg: Any, ref: str, model_name: str | None, iters: int,
                 threads: int, say: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(what was measured, one row of COLUMNS per format in flows.ops.export.RUNTIMES)."""
    import numpy as np  # here, not at import: `grasp` registers this bench's parser on every command

    from flows.ops.deploy import fetch_version, target_test_images
    from flows.ops.export import RUNTIMES, load_runner, logits_in_batches, parity

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        fetched = fetch_version(ws, tracking_uri, ref, model_name, weights_dir=tmp)
        images, _ = target_test_images(ws, cfg, fetched)
        files = _files(fetched, tmp)
        reference = logits_in_batches(load_runner("pytorch", model=fetched.model), images)
        np.save(tmp / "images.npy", images[np.arange(max(BATCHES)) % len(images)])  # (32, C, H, W), cycled
        rows = []
        for fmt in RUNTIMES:
            say(f"bench deploy: {fmt} ({files[fmt].stat().st_size:,} bytes) in a fresh process")
            runner = load_runner("pytorch", model=fetched.model) if fmt == "pytorch" else load_runner(fmt, files[fmt])
            check = parity(reference, logits_in_batches(runner, images))
            probe = _probe(fmt, files[fmt], tmp / "images.npy", iters, threads)
            rows.append({"format": fmt, "file_bytes": files[fmt].stat().st_size,
                         "peak_rss_mb": round(probe["peak_rss_bytes"] / 2**20, 1), "load_s": round(probe["load_s"], 3),
                         **{key: round(probe[key], 4) for key in _LATENCIES},
                         "max_abs_logit_diff": float(f"{check.max_abs_logit_diff:.3g}"),
                         "agreement_frac": check.agreement_frac})
    about = {"model": fetched.name, "version": fetched.version, "arch": fetched.header.arch,
             "input_shape": list(fetched.header.input_shape), "test_images": len(images), "iters": iters,
             "threads": threads}
    return about, rows


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench deploy` to the `grasp bench` sub-parsers."""
    from flows.runtime.options import bench_output_args

    cmd = bench_sub.add_parser(
        "deploy", parents=[bench_output_args()],
        help="size, peak RSS, CPU latency and parity of a version as PyTorch, TorchScript and ONNX",
        description="Export a registered version (default @champion) to TorchScript and ONNX next to its "
        "safetensors weights; per format, a fresh process loads the file and predicts the target's test images "
        "(cycled to batch 32) and reports its peak RSS and p50/p95 latency at batch 1 and 32 on CPU; parity is "
        "max |logit diff| and prediction agreement against PyTorch on the whole test split.")
    cmd.add_argument("version", nargs="?", default="@champion", help="a version number or @alias")
    cmd.add_argument("--iters", type=int, default=100, help="timed calls per batch size (default 100)")
    cmd.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime (default 1)")
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    cmd.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    cmd.add_argument("--model", help="registered model name (default: the only grasp-* model)")
    cmd.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                     "sqlite:///<workdir>/mlflow.db)")
    cmd.set_defaults(handler=cmd_bench_deploy)


def cmd_bench_deploy(args: argparse.Namespace) -> int:
    from flows.reports.progress import Progress
    from flows.reports.tables import format_rows, write_json
    from flows.runtime.settings import apply_defaults
    from grasp_core.config import load_config
    from grasp_core.errors import ConfigError

    if args.iters < 2 or args.threads < 1:
        raise ConfigError(f"--iters {args.iters} must be >= 2 and --threads {args.threads} >= 1")
    apply_defaults(args.workdir)
    about, rows = deploy_bench(args.workdir, args.tracking_uri, load_config(args.params), args.version, args.model,
                               args.iters, args.threads, Progress(args.quiet).say)
    print(f"{about['model']} v{about['version']} ({about['arch']}, input {about['input_shape']}), "
          f"{about['test_images']} test images, {about['threads']} thread(s), {about['iters']} timed calls per batch")
    print(format_rows(rows, COLUMNS))
    by = {row["format"]: row for row in rows}
    print(f"onnx p50 batch 1: {by['onnx']['p50_ms_b1'] / by['pytorch']['p50_ms_b1']:.2f}x pytorch's; "
          f"torchscript: {by['torchscript']['p50_ms_b1'] / by['pytorch']['p50_ms_b1']:.2f}x")
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
