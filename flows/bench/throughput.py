"""`grasp bench throughput`: training images/s on the embedded default, decoded once vs every epoch.

Ours: `read_split` decodes a domain's PNGs once into one tensor and `Batches` slices it each epoch, so
epoch 1 pays the decode and later epochs do not. The baseline is the common torch pattern: a Dataset
that opens the PNG in `__getitem__`, behind a `DataLoader` with `--workers` processes, decoding every
epoch. Both train the same architecture from the same seed with the same batch size and augmentation;
the data-only rows iterate the batches without a model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from flows.runtime.options import Subcommands
    from grasp_core.config import Config

COLUMNS = ("loader", "epoch", "images", "seconds", "images_per_s")


def _png_dataset(root: Path, files: tuple[str, ...], labels: list[int], augment: bool) -> Any:
    """A map-style Dataset that decodes one PNG per `__getitem__` (the decode-every-epoch baseline)."""
    import torch
    import torch.nn.functional as F

    from grasp_core.data import decode_image, to_batch

    class PngDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            x = to_batch([decode_image(root / files[i])])[0]  # the training preprocessing, one image at a time
            if augment:  # the same +-1 pixel shift as grasp_core.data.loaders, per image
                dy, dx = torch.randint(0, 3, (2,)).tolist()
                x = F.pad(x, (1, 1, 1, 1))[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]
            return x, labels[i]

    return PngDataset()


def _epoch(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], step: Callable[..., None] | None) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for x, y in batches:
        if step is not None:
            step(x, y)
        n += len(y)
    return n, time.perf_counter() - t0


def _trainer(cfg: Config, num_classes: int, shape: tuple[int, int, int]) -> Callable[..., None]:
    import torch
    import torch.nn.functional as F

    from grasp_core.models import build_model, input_spec

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, num_classes, shape, input_spec(cfg.model.image_size, cfg.model.mean,
                                                                         cfg.model.std)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sources.lr, weight_decay=cfg.finetune.weight_decay)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def throughput_bench(cfg: Config, epochs: int, workers: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows of COLUMNS: ours (epoch 1 with decode, then cached) and the baseline, training and data-only."""
    import torch

    from grasp_core.data import Batches, check_layout, read_split
    from grasp_core.data.drift import write_digits_drift

    root = Path(tempfile.mkdtemp(prefix="grasp-throughput-")) / "data"
    say(f"writing the embedded benchmark ({cfg.data.generator}) to {root}")
    write_digits_drift(root, cfg.data, cfg.base, cfg.seed)
    classes = check_layout(root)
    domain = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "._")[0]
    rows: list[dict[str, Any]] = []

    def record(loader: str, epoch: str, n: int, seconds: float) -> None:
        rows.append({"loader": loader, "epoch": epoch, "images": n, "seconds": round(seconds, 4),
                     "images_per_s": round(n / seconds, 1)})

    for train in (True, False):
        kind = "train" if train else "data-only"
        t0 = time.perf_counter()
        split = read_split(root, domain, "train", classes)
        decode_s = time.perf_counter() - t0
        step = _trainer(cfg, len(classes), tuple(split.x.shape[1:])) if train else None  # type: ignore[arg-type]
        batches = Batches(split, cfg.sources.batch_size, shuffle=True, augment=cfg.data.augment, seed=cfg.seed)
        for epoch in range(1, epochs + 1):
            n, seconds = _epoch(batches, step)
            record(f"{kind}: decoded once (grasp)", str(epoch), n, seconds + (decode_s if epoch == 1 else 0.0))
        dataset = _png_dataset(root, split.files, split.y.tolist(), cfg.data.augment)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.sources.batch_size, shuffle=True,
                                             num_workers=workers, persistent_workers=workers > 0,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        step = _trainer(cfg, len(classes), tuple(split.x.shape[1:])) if train else None  # type: ignore[arg-type]
        for epoch in range(1, epochs + 1):
            n, seconds = _epoch(loader, step)
            record(f"{kind}: decode every epoch (DataLoader, {workers} workers)", str(epoch), n, seconds)
        say(f"{kind} done")
    return rows


def speedups(rows: list[dict[str, Any]]) -> list[str]:
    """Epoch 2+ of ours against epoch 2+ of the baseline (both past their start-up), per kind."""
    lines = []
    for kind in ("train", "data-only"):
        mean = {}
        for mine in (True, False):
            picked = [r for r in rows if r["loader"].startswith(kind) and ("grasp" in r["loader"]) == mine
                      and r["epoch"] != "1"]
            mean[mine] = sum(r["images"] for r in picked) / sum(r["seconds"] for r in picked)
        lines.append(f"{kind}: epoch 2+ decoded once {mean[True]:,.0f} images/s vs decode every epoch "
                     f"{mean[False]:,.0f} images/s = {mean[True] / mean[False]:.2f}x")
    return lines


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench throughput` to the `grasp bench` sub-parsers."""
    from flows.runtime.options import bench_output_args

    cmd = bench_sub.add_parser(
        "throughput", parents=[bench_output_args()],
        help="training images/s: decoded once (grasp) vs a decode-every-epoch DataLoader",
        description="Write the embedded benchmark to a temporary folder, then train model.arch on one domain's "
        "train split for --epochs epochs with grasp's loader (PNGs decoded once into memory; epoch 1 includes "
        "the decode) and with a torch DataLoader whose Dataset decodes the PNG in __getitem__ every epoch "
        "(--workers processes). Prints images/s per epoch, training and data-only, and the epoch-2+ ratio.")
    cmd.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml (defaults if missing)")
    cmd.add_argument("--epochs", type=int, default=3, help="epochs per loader (>= 2; default 3)")
    cmd.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the baseline (default 0)")
    cmd.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    cmd.set_defaults(handler=cmd_bench_throughput)


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    import torch

    from flows.reports.progress import Progress
    from flows.reports.tables import format_rows, write_json
    from grasp_core.config import Config, load_config
    from grasp_core.errors import ConfigError

    if args.epochs < 2 or args.workers < 0 or args.threads < 0:
        raise ConfigError(f"--epochs {args.epochs} must be >= 2, --workers and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params) if args.params.exists() else Config()
    rows = throughput_bench(cfg, args.epochs, args.workers, Progress(args.quiet).say)
    print(f"model.arch {cfg.model.arch}, batch {cfg.sources.batch_size}, augment {cfg.data.augment}, "
          f"{torch.get_num_threads()} torch thread(s), {args.workers} DataLoader worker(s)")
    print(format_rows(rows, COLUMNS))
    print("\n".join(speedups(rows)))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
