"""Domains held in memory as tensors, and seeded mini-batch iterators over them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from grasp_core.data.layout import Split, read_split

Batch = tuple[torch.Tensor, torch.Tensor]  # (B, C, H, W) float, (B,) int64


@dataclass(frozen=True)
class DomainData:
    """One domain's three splits, decoded once."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]  # (C, H, W)

    def to(self, device: torch.device | str) -> DomainData:
        """The same domain with every split's tensors on `device`."""
        return DomainData(name=self.name, classes=self.classes, train=self.train.to(device), val=self.val.to(device),
                          test=self.test.to(device))


def subsample(split: Split, frac: float, seed: int) -> Split:
    """A stratified, seeded share `frac` of a split (at least one image per class)."""
    if frac >= 1.0:
        return split
    gen = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for cls in split.y.unique().tolist():
        idx = torch.nonzero(split.y == cls).flatten()
        n = max(1, round(frac * len(idx)))
        keep.extend(idx[torch.randperm(len(idx), generator=gen)[:n]].tolist())
    order = torch.tensor(sorted(keep))
    return Split(x=split.x[order], y=split.y[order], files=tuple(split.files[i] for i in order))


def load_domain(root: Path, domain: str, classes: list[str], train_frac: float = 1.0,
                seed: int = 0) -> DomainData:
    """Read a domain; `train_frac` < 1 keeps a stratified share of its train split."""
    splits = {s: read_split(root, domain, s, classes) for s in ("train", "val", "test")}
    return DomainData(name=domain, classes=tuple(classes), train=subsample(splits["train"], train_frac, seed),
                      val=splits["val"], test=splits["test"])


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a random offset in {-1, 0, 1}^2 (zero fill)."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


class Batches:
    """Re-iterable mini-batches over a split: a new seeded shuffle on each pass.

    Args:
        split: the images.
        batch_size: images per batch.
        shuffle: reshuffle on every pass (seeded from `seed` and the pass number).
        drop_last: drop the last incomplete batch (the paper's train loader does).
        augment: random +-1 pixel shifts (see `data.augment`).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                 augment: bool = False, seed: int = 0) -> None:
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.seed, self.passes = seed, 0

    def reset(self) -> None:
        """Restart the shuffle sequence, so every method sees the same batches (paired comparison)."""
        self.passes = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        self.passes += 1
        n = len(self.split)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)  # CPU RNG: same on any device
        order = order.to(self.split.x.device)  # once per pass, so slicing a batch never copies host to device
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.split.x[idx]
            yield (_shift(x, gen) if self.augment else x), self.split.y[idx]
