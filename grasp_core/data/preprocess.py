"""The one image preprocessing of grasp: an image file becomes a float tensor in [0, 1], (C, H, W).

Training (`read_split`) and inference (`grasp predict`, clients of the served model) both go through
`decode_image` and `to_batch`, so a deployed model sees exactly the pixels it was trained on. Normalisation
(mean/std, resizing for ImageNet-family archs) lives inside the model, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from grasp_core.errors import DataLayoutError

GREY_MODES = ("L", "1", "P", "I;16")  # PIL modes decoded as one grey channel when no channel count is asked


def decode_image(path: Path, channels: int | None = None, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels of one image file, (H, W) grey or (H, W, 3) RGB, uint8.

    Args:
        channels: 1 (grey) or 3 (RGB); None keeps grey images grey and makes every other mode RGB.
        size_hw: resize to (H, W) when the image differs (bicubic, as `grasp data import` resizes).
    """
    try:
        with Image.open(path) as raw:
            grey = raw.mode in GREY_MODES if channels is None else channels == 1
            img = raw.convert("L" if grey else "RGB")  # a decoded copy: usable once the file closes
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataLayoutError(f"{path}: unreadable image ({err}); remove or replace the file") from None
    if size_hw is not None and img.size != (size_hw[1], size_hw[0]):
        img = img.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(img)


def to_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Decoded images of one shape as a float batch in [0, 1], (N, C, H, W)."""
    stacked = np.stack(images)  # (N, H, W) or (N, H, W, C)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def load_images(paths: Sequence[Path], input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Image files as a model's input batch (N, C, H, W): converted to its channels and resized to its size."""
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataLayoutError(f"input shape {input_shape}: {channels} channels; images decode to 1 (grey) or 3 (RGB)")
    return to_batch([decode_image(p, channels, (height, width)) for p in paths])
