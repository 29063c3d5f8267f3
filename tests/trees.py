"""Small image folder trees in the public layouts, built on the fly (PNG and JPEG, RGB and grey, odd sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> None:
    """A seeded random image of `size` (W, H); the suffix of `path` picks PNG or JPEG."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def split_tree(root: Path, domains: list[str], classes: tuple[str, ...] = ("a", "b"), per_split: int = 2,
               splits: tuple[str, ...] = SPLITS, seed: int = 0) -> Path:
    """`<root>/<domain>/<split>/<class>/` with grey PNGs, the layout of Yearbook periods and CLEAR bins."""
    for d, domain in enumerate(domains):
        for s, split in enumerate(splits):
            for c, cls in enumerate(classes):
                for i in range(per_split):
                    write_image(root / domain / split / cls / f"{i}.png", seed + 10_000 * d + 1_000 * s + 100 * c + i)
    return root


def plain_tree(root: Path, domains: list[str], classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 10,
               seed: int = 0) -> Path:
    """`<root>/<domain>/<class>/` mixing RGB JPEGs, grey PNGs and one odd size per class."""
    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            for i in range(per_class):
                key = seed + 10_000 * d + 100 * c + i
                if i % 3 == 0:
                    write_image(root / domain / cls / f"{i}.png", key, mode="L")
                else:
                    write_image(root / domain / cls / f"{i}.jpg", key, size=(12, 10) if i != 1 else (17, 9),
                                mode="RGB")
    return root
