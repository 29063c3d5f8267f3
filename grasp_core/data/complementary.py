"""The complementary embedded benchmark: each source saw only some of the classes; the target needs all.

Same digits and the same split-first pools as `digits_drift` (no test digit is ever trained on), but
every domain shares one drift, the target's: rotation by (domains - 1) * `data.rotation_step_deg` degrees
(jitter +-1/3 step) and pixel noise of std (domains - 1) * `data.noise_step`. What differs is coverage:
with K = domains - 1 sources, source group g trains on the classes c with c % K == g (10 classes, 4
sources: 2-3 classes each), keeping only TOKEN_IMAGES images of every other class (every class folder
must hold images). No single source covers the target well; what the K sources know together does.
Val and test splits hold every class in every domain, and the target's train split holds every class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from grasp_core.config import BaseConfig, DataConfig
from grasp_core.data.drift import domain_names, start_benchmark, write_images

TOKEN_IMAGES = 2  # images a source keeps of a class outside its group: enough for the layout, not to learn it


def group_pool(pool: np.ndarray, labels: np.ndarray, group: int, groups: int) -> np.ndarray:
    """`pool` restricted to the classes of `group` (c % groups == group), plus TOKEN_IMAGES of each other class."""
    keep = [pool[labels[pool] % groups == group]]
    for cls in np.unique(labels[pool]):
        if cls % groups != group:
            keep.append(pool[labels[pool] == cls][:TOKEN_IMAGES])
    return np.sort(np.concatenate(keep))


def write_digits_complementary(root: Path, cfg: DataConfig, base: BaseConfig, seed: int) -> list[str]:
    """Write the benchmark under `root` (which must not exist yet) and return the domain names, oldest first.

    Deterministic: the same config and seed write byte-identical PNGs.
    """
    images, labels, pools, rng = start_benchmark(root, cfg, base, seed)
    sources = cfg.domains - 1  # the newest domain is the target
    angle, jitter, noise = sources * cfg.rotation_step_deg, cfg.rotation_step_deg / 3, sources * cfg.noise_step
    for group, name in enumerate(domain_names(cfg)):
        for split in ("train", "val", "test"):
            indices = pools[split]
            if split == "train" and group < sources:
                indices = group_pool(indices, labels, group, sources)
            write_images(root / name / split, images, labels, indices, cfg.image_size, angle, jitter, noise, rng)
    return domain_names(cfg)
