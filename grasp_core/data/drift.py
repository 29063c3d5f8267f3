"""The embedded drift benchmark: real handwritten digits with a shift that grows with time.

Source of images: scikit-learn's copy of the UCI optdigits test set (1,797 real 8x8 scans by 13
writers, 10 classes), shipped inside the scikit-learn wheel, so nothing is downloaded.

Split first, then drift: the 1,797 underlying digits are cut once, stratified by class, into pools
(base / train / val / test). Every domain renders the same pools through its own drift, so no test
digit of any domain is ever seen in training, in any domain. Domain t (t = 0 is the oldest):
  * rotation by t * `data.rotation_step_deg` degrees, +-1/3 of a step of per-image jitter;
  * additive Gaussian pixel noise of std t * `data.noise_step` (sensor ageing).
The base pool (written undrifted to `<root>/_base/train`) pretrains the shared base model and never
appears in a domain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grasp_core.config import BaseConfig, DataConfig

BASE_DIR = "_base"


def domain_names(cfg: DataConfig) -> list[str]:
    """Domain folder names, oldest first (years, so a lexical sort is the time order)."""
    return [str(cfg.first_year + t) for t in range(cfg.domains)]


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: only the generator needs scikit-learn

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # (N, 8, 8)
    return images, digits.target.astype(np.int64)


def split_pools(labels: np.ndarray, cfg: DataConfig, base: BaseConfig,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stratified index pools; the base pool only exists when the base is pretrained."""
    base_frac = base.frac if base.mode == "pretrain" else 0.0
    cuts = np.cumsum([cfg.test_frac, cfg.val_frac, base_frac])
    pools: dict[str, list[int]] = {"test": [], "val": [], "_base": [], "train": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = (cuts * len(idx)).round().astype(int)
        for name, part in zip(pools, np.split(idx, bounds), strict=False):
            pools[name].extend(part.tolist())
    return {name: np.array(sorted(v), dtype=np.int64) for name, v in pools.items()}


def _render(image: np.ndarray, size: int, angle_deg: float, noise_std: float,
            rng: np.random.Generator) -> np.ndarray:
    img = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    img = img.rotate(angle_deg, resample=Image.Resampling.BILINEAR, fillcolor=0)
    out = np.asarray(img, dtype=np.float32) / 255.0
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
    return (out.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)  # (H, W)


def write_images(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, size: int,
                 angle_deg: float, jitter_deg: float, noise_std: float, rng: np.random.Generator) -> None:
    for i in indices:
        angle = angle_deg + rng.uniform(-jitter_deg, jitter_deg)
        pixels = _render(images[i], size, angle, noise_std, rng)
        path = folder / str(labels[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(path)


def start_benchmark(root: Path, cfg: DataConfig, base: BaseConfig, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.random.Generator]:
    """What every digits benchmark starts with: the images, the seeded split pools, and the base pool written."""
    images, labels = load_digits_images()
    rng = np.random.default_rng(seed)
    pools = split_pools(labels, cfg, base, rng)
    if len(pools["_base"]):
        write_images(root / BASE_DIR / "train", images, labels, pools["_base"], cfg.image_size, 0.0, 0.0, 0.0, rng)
    return images, labels, pools, rng


def write_digits_drift(root: Path, cfg: DataConfig, base: BaseConfig, seed: int) -> list[str]:
    """Write the benchmark under `root` (which must not exist yet) and return the domain names.

    Deterministic: the same config and seed write byte-identical PNGs.
    """
    images, labels, pools, rng = start_benchmark(root, cfg, base, seed)
    names = domain_names(cfg)
    for t, name in enumerate(names):
        angle, jitter = t * cfg.rotation_step_deg, cfg.rotation_step_deg / 3
        for split in ("train", "val", "test"):
            write_images(root / name / split, images, labels, pools[split], cfg.image_size, angle, jitter,
                         t * cfg.noise_step, rng)
    return names
