"""`grasp bench memory`: peak memory of GRASP, fusion and the ensemble as the number of sources K grows.

Every (method, K) runs in a fresh process (`python -m flows.bench.memory --worker ...`), so its
peak RSS is its own and not the high-water mark of earlier runs. The K sources are real safetensors
checkpoints in a temporary workspace, streamed from disk through a `MethodContext`: cheap to make
(perturbed copies of ONE trained source, which the output says), but loaded exactly as a run loads.

The default model is `bench_mlp` (about 2.8 M parameters, 10.6 MiB): the product's `small_cnn` holds
0.1 MiB of parameters, so even 32 of them vanish in the RSS of a process that imported torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from torch import nn

    from flows.pipeline.workspace import Workspace
    from flows.runtime.options import Subcommands
    from grasp_core.checkpoints import SavedCheckpoint
    from grasp_core.config import Config
    from grasp_core.models import InputSpec

BENCH_ARCH = "bench_mlp"
BENCH_HIDDEN = 1536  # two 1536-wide hidden layers: parameters, not activations, dominate the model's memory
DEFAULT_KS = (2, 4, 8, 16, 32)
DEFAULT_METHODS = ("grasp", "fusion", "ensemble")
BENCH_VAL_FRAC, BENCH_TEST_FRAC, BENCH_TARGET_TRAIN_FRAC = 0.05, 0.1, 0.1  # small splits: fewer images per stage
NOISE_FRAC = 0.01  # each copy: every tensor + Gaussian noise of 1 % of its mean |value|
TABLE = ("method", "k", "peak_rss_mb", "rss_before_mb", "peak_model_mb", "models_alive", "param_sized_multiple",
         "wall_s")
GRASP_RSS_RATIO_MAX = 1.05  # issue 17's target (resnet50 K=32/K=2)
GRASP_MULTIPLE_MAX = 4.0  # weights + grads + 2 AdamW moments (rollback and best-val copies on disk); official ~7


def build_bench_mlp(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec | None = None) -> nn.Module:
    """Flatten -> 1536 -> 1536 -> classes, ReLU between: parameter-heavy and cheap to run on a CPU.

    Takes the registry's builder signature (`spec`, the ImageNet-style input spec, is unused: no resizing)."""
    from torch import nn

    flat = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(flat, BENCH_HIDDEN), nn.ReLU(), nn.Linear(BENCH_HIDDEN, BENCH_HIDDEN),
                         nn.ReLU(), nn.Linear(BENCH_HIDDEN, num_classes))


def register_bench_arch() -> None:
    """Add `bench_mlp` to the architecture registry (on use, so importing this module changes nothing)."""
    from grasp_core.models import ARCHITECTURES, register_architecture

    if BENCH_ARCH not in ARCHITECTURES:
        register_architecture(BENCH_ARCH)(build_bench_mlp)


def bench_config(params: Path | None, arch: str) -> Config:
    """params.yaml (defaults without it) with the bench's budget: no base pretraining, 1 epoch per stage, and
    small val/test/target-train splits. Memory depends on the model and K, not on how many images pass."""
    from grasp_core.config import Config, load_config, replace

    cfg = load_config(params) if params is not None and params.is_file() else Config()
    return replace(cfg, model__arch=arch, model__weights="", base__mode="init", sources__epochs=1,
                   finetune__initial_epochs=1, finetune__epochs=1, data__val_frac=BENCH_VAL_FRAC,
                   data__test_frac=BENCH_TEST_FRAC, data__target_train_frac=BENCH_TARGET_TRAIN_FRAC)


def copy_names(k: int) -> list[str]:
    return [f"copy{i:02d}" for i in range(k)]


def write_copies(ws: Workspace, source: SavedCheckpoint, k: int, seed: int) -> list[str]:
    """Write `k` perturbed copies of the `source` checkpoint as sources `copy00`, `copy01`, ... of `ws`."""
    import torch

    from grasp_core.checkpoints import CheckpointHeader, load_checkpoint, save_checkpoint

    model, header = load_checkpoint(source.path)
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    for name in copy_names(k):
        with torch.no_grad():
            for param_name, p in model.named_parameters():
                base = originals[param_name]
                p.copy_(base + torch.randn(base.shape, generator=gen) * NOISE_FRAC * base.abs().mean())
        extra = {"role": "source", "domain": name, "copy_of": header.extra.get("domain", "")}
        save_checkpoint(model, ws.source(name), CheckpointHeader(header.arch, header.num_classes, header.classes,
                                                                 header.input_shape, extra))
    return copy_names(k)


def prepare_workspace(cfg: Config, root: Path, k_max: int) -> dict[str, Any]:
    """Data, a base, one trained source and `k_max` copies of it under `root`; returns what the output says."""
    import yaml

    from flows.pipeline.workspace import (
        Workspace,
        ensure_base,
        ensure_source,
        layout_classes,
        load_target,
        materialise_data,
        resolve_roles,
    )
    from grasp_core.data import load_domain
    from grasp_core.memory import model_param_bytes
    from grasp_core.models import build_model

    if cfg.model.arch == BENCH_ARCH:
        register_bench_arch()
    ws = Workspace(root)
    (root / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    domains, _ = materialise_data(cfg, ws)
    classes = layout_classes(cfg, ws)
    target, sources = resolve_roles(cfg, domains)
    first = load_domain(ws.data(cfg), sources[0], classes)
    base, _ = ensure_base(cfg, ws, classes, first.input_shape)
    trained, _ = ensure_source(cfg, ws, first.name, classes, base, cfg.seed + 1)
    write_copies(ws, trained, k_max, cfg.seed)
    model = build_model(cfg.model.arch, len(classes), first.input_shape)
    size, shapes = model_param_bytes(model), {tuple(p.shape) for p in model.parameters()}
    # BatchNorm running statistics have their layer's weight shape, so the live-tensor scan counts them too
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if tuple(b.shape) in shapes)
    return {"arch": cfg.model.arch, "model_param_bytes": size, "buffer_frac": round(buffers / size, 4),
            "target": target, "copied_source": sources[0],
            "target_train": len(load_target(cfg, ws, target, classes).train), "workspace": str(root)}


def own_peak_rss_bytes() -> int:
    """This process image's peak RSS: VmHWM on Linux, else ru_maxrss.

    Linux carries ru_maxrss across fork and exec (`exec_mmap` folds the pre-exec memory's high-water mark into
    it), so a worker started by a 1 GiB parent reports at least 1 GiB there; VmHWM belongs to the new image only.
    """
    from grasp_core.memory import peak_rss_bytes

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def measure_method(root: Path, method: str, k: int) -> dict[str, Any]:
    """Worker body: run `method` over the first `k` copies and report this process's memory."""
    from flows.pipeline.core_run import method_context
    from flows.pipeline.workspace import Workspace, layout_classes, resolve_roles
    from flows.reports.progress import Progress
    from grasp_core.config import load_config
    from grasp_core.data import list_domains
    from grasp_core.memory import settle
    from grasp_core.methods import run_method

    ws = Workspace(root)
    cfg = load_config(root / "params.yaml")
    if cfg.model.arch == BENCH_ARCH:
        register_bench_arch()
    classes = layout_classes(cfg, ws)
    target, _ = resolve_roles(cfg, list_domains(ws.data(cfg)))
    ctx = method_context(cfg, ws, target, copy_names(k), classes, Progress(quiet=True))
    settle()  # nothing alive yet: later live-tensor scans only walk what the method creates
    rss_before = own_peak_rss_bytes()
    result = run_method(method, ctx)
    mem = result.memory
    return {"method": method, "k": k, "peak_rss_mb": _mib(own_peak_rss_bytes()),
            "rss_before_mb": _mib(rss_before), "peak_model_bytes": mem.param_bytes_alive,
            "models_alive": mem.models_alive, "param_sized_multiple": mem.param_sized_multiple,
            "target_steps": result.target_steps, "test_accuracy": round(result.test_accuracy, 4),
            "wall_s": round(result.wall_s, 2)}


def _mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def run_worker(root: Path, method: str, k: int, threads: int = 0) -> dict[str, Any]:
    """One (method, K) in a fresh interpreter (`threads` torch threads, 0 = torch's default); its JSON row is
    the last line it prints."""
    cmd = [sys.executable, "-m", "flows.bench.memory", "--worker", str(root), "--method", method, "--k", str(k),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory bench worker {method} K={k} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_bench(params: Path | None, ks: tuple[int, ...] = DEFAULT_KS, methods: tuple[str, ...] = DEFAULT_METHODS,
                 arch: str = BENCH_ARCH, jobs: int = 2, say: Callable[[str], None] = print,
                 keep: bool = False) -> dict[str, Any]:
    """Measure every (method, K) in its own process; returns {"info", "rows", "ratios", "checks"}."""
    from grasp_core.methods import get_method

    for method in methods:
        get_method(method)  # an unknown name fails here, with the valid names, before any work
    root = Path(tempfile.mkdtemp(prefix="grasp-bench-memory-"))
    try:
        say(f"preparing {max(ks)} source checkpoints under {root} ...")
        info = prepare_workspace(bench_config(params, arch), root, max(ks))
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
        grid = sorted(((m, k) for m in methods for k in ks), key=lambda mk: -mk[1])  # longest first: fewer idle cores
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(lambda mk: _announced(root, mk[0], mk[1], threads, say), grid))
        rows.sort(key=lambda r: (methods.index(r["method"]), r["k"]))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        row.update(arch=info["arch"], model_param_bytes=info["model_param_bytes"], buffer_frac=info["buffer_frac"])
    found = memory_ratios(rows)
    return {"info": info, "rows": rows, "ratios": found, "checks": check_targets(rows, found)}


def _announced(root: Path, method: str, k: int, threads: int, say: Callable[[str], None]) -> dict[str, Any]:
    row = run_worker(root, method, k, threads)
    say(f"{method} K={k}: peak RSS {row['peak_rss_mb']} MiB, models alive {row['models_alive']} ({row['wall_s']}s)")
    return row


def memory_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: peak RSS and peak parameter bytes at the largest K over those at the smallest K."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["k"])
        lo, hi = mine[0], mine[-1]
        out.append({"method": method, "k_from": lo["k"], "k_to": hi["k"],
                    "rss_ratio": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3),
                    "param_bytes_ratio": round(hi["peak_model_bytes"] / max(lo["peak_model_bytes"], 1), 3)})
    return out


def check_targets(rows: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The memory claims, each with the measured value and whether it holds."""
    by_method = {r["method"]: r for r in found}
    checks = []
    if grasp := by_method.get("grasp"):
        span = f"K={grasp['k_to']}/K={grasp['k_from']}"
        multiple = max(r["param_sized_multiple"] for r in rows if r["method"] == "grasp")
        buffers = max(r.get("buffer_frac", 0.0) for r in rows)  # the model's own BN statistics, not copies
        limit = round(GRASP_MULTIPLE_MAX + buffers, 4)
        checks += [{"target": f"grasp peak RSS {span} <= {GRASP_RSS_RATIO_MAX}", "value": grasp["rss_ratio"],
                    "ok": grasp["rss_ratio"] <= GRASP_RSS_RATIO_MAX},
                   {"target": f"grasp peak parameter bytes {span} = 1.0", "value": grasp["param_bytes_ratio"],
                    "ok": grasp["param_bytes_ratio"] == 1.0},
                   {"target": f"grasp peak param-sized tensors <= {GRASP_MULTIPLE_MAX:g} model sizes"
                    + (f" + {buffers:g} of BN statistics" if buffers else "") + " (official ~7)",
                    "value": multiple, "ok": multiple <= limit}]
    if ens := by_method.get("ensemble"):
        want = ens["k_to"] / ens["k_from"]
        checks.append({"target": f"ensemble peak parameter bytes K={ens['k_to']}/K={ens['k_from']} ~ {want:g}",
                       "value": ens["param_bytes_ratio"], "ok": abs(ens["param_bytes_ratio"] / want - 1) <= 0.1})
    return checks


def plot_memory(rows: list[dict[str, Any]], path: Path) -> Path:
    """Log-log PNG: K against peak parameter bytes (left) and peak RSS (right), one line per method."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    fig = Figure(figsize=(10, 4.2), dpi=100)
    axes = dict(zip(("peak_model_mb", "peak_rss_mb"), fig.subplots(1, 2), strict=True))
    styles = iter([("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-")])
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["k"])
        marker, line = next(styles, ("o", "-"))
        for key, ax in axes.items():
            ax.plot([r["k"] for r in mine], [_value(r, key) for r in mine], marker=marker, ls=line, label=method)
    labels = {"peak_model_mb": "peak parameter bytes alive (MiB)", "peak_rss_mb": "process peak RSS (MiB)"}
    for key, ax in axes.items():
        ax.set(xscale="log", yscale="log", xlabel="sources K", ylabel=labels[key])
        _log_ticks(ax.xaxis, sorted({r["k"] for r in rows}))
        values = [_value(r, key) for r in rows]
        _log_ticks(ax.yaxis, [round(v, -1 if v > 200 else 0) for v in _geometric(min(values), max(values), 6)])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"peak memory vs number of sources ({rows[0].get('arch', '')}, one process per point)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _value(row: dict[str, Any], key: str) -> float:
    return row["peak_model_bytes"] / 2**20 if key == "peak_model_mb" else row[key]


def _geometric(lo: float, hi: float, n: int) -> list[float]:
    return [lo] if hi <= lo else [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def _log_ticks(axis: Axis, ticks: list[float]) -> None:
    """Plain-number ticks at `ticks` on a log axis (matplotlib's default labels are 10^x and overlap)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    axis.set_major_locator(FixedLocator(sorted(set(ticks))))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(lambda value, _: f"{value:g}")


def format_bench(bench: dict[str, Any]) -> str:
    """The header, the per-(method, K) table, the ratios and the targets, as printed."""
    from flows.reports.tables import format_rows

    info = bench["info"]
    rows = [{**r, "peak_model_mb": _mib(r["peak_model_bytes"])} for r in bench["rows"]]
    head = (f"sources: K perturbed copies (noise {NOISE_FRAC:.0%} of mean |w| per tensor) of ONE source trained on "
            f"{info['copied_source']}, written as safetensors and streamed from disk; target {info['target']}; "
            f"model {info['arch']} ({_mib(info['model_param_bytes'])} MiB of parameters); budget 1 epoch per stage, "
            f"{info['target_train']} target train images; "
            "each (method, K) in a fresh process")
    checks = [f"  [{'ok' if c['ok'] else 'MISSED'}] {c['target']}: {c['value']}" for c in bench["checks"]]
    return "\n".join([head, "", format_rows(rows, TABLE), "", format_rows(bench["ratios"]), "", "targets:", *checks])


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected comma-separated integers, e.g. 2,4,8") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give at least two K values, each >= 1")
    return values


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench memory` to the `grasp bench` sub-parsers."""
    from flows.runtime.options import bench_output_args

    cmd = bench_sub.add_parser(
        "memory", parents=[bench_output_args()],
        help="peak RSS and parameter bytes alive vs number of sources K (GRASP, fusion, ensemble)",
        description="For K in --ks sources and each method, run the method in a fresh process over K source "
        "checkpoints streamed from disk (perturbed copies of one trained source, in a temporary folder) and "
        "report process peak RSS, peak parameter bytes alive, models alive and the peak parameter-sized "
        "multiple; print the ratios largest-K/smallest-K, check GRASP's memory targets, and plot K against "
        "memory on log-log axes.")
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="params.yaml for data and model settings (defaults if missing); the bench overrides the "
                     "budget to 1 epoch per stage")
    cmd.add_argument("--ks", type=_int_list, default=DEFAULT_KS, help="numbers of sources (default: 2,4,8,16,32)")
    cmd.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="methods (default: grasp,fusion,ensemble)")
    cmd.add_argument("--arch", default=BENCH_ARCH, help=f"architecture (default {BENCH_ARCH}: 10.6 MiB of parameters)")
    cmd.add_argument("--jobs", type=int, default=2, help="workers run at once (RSS stays per process; default 2)")
    cmd.add_argument("--plot", type=Path, default=Path("reports/bench-memory.png"), help="log-log PNG to write")
    cmd.set_defaults(handler=cmd_bench_memory)


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from flows.reports.progress import Progress
    from flows.reports.tables import write_json

    progress = Progress(args.quiet)
    bench = memory_bench(args.params, args.ks, tuple(args.methods.split(",")), args.arch, args.jobs, progress.say)
    print(format_bench(bench))
    print(f"plot: {plot_memory(bench['rows'], args.plot)}")
    if args.json:
        write_json(bench["rows"], args.json)
        print(f"wrote {args.json}")
    return 0


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.bench.memory", description="one (method, K) measurement")
    parser.add_argument("--worker", type=Path, required=True, help="the bench's prepared workspace")
    parser.add_argument("--method", required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)  # parallel workers on few cores: oversubscribed threads only cost time
    print(json.dumps(measure_method(args.worker, args.method, args.k)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
