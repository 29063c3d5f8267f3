"""The input contract of the ImageNet-family networks, carried inside the model (and its checkpoint).

Data arrive as (B, 1 or 3, H, W) in [0, 1]; these networks want 3 channels at their own image size,
normalised. Mean, std and size are persistent buffers, so every checkpoint restores the contract it was
trained with, whatever params.yaml says later; they are buffers, so alignment and transfer never touch them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's (and timm's) ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """See `model.image_size`, `model.mean` and `model.std`; empty mean/std = the architecture's default."""

    image_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def is_default(self) -> bool:
        return self == InputSpec()


def _three(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(values) * 3 if len(values) == 1 else list(values), dtype=torch.float32)


class InputAdapter(nn.Module):
    """Repeat grey to RGB, resize to `image_size` (bilinear, antialiased; 0 = keep), normalise, run `net`."""

    input_mean: torch.Tensor  # (1, 3, 1, 1)
    input_std: torch.Tensor  # (1, 3, 1, 1)
    input_size: torch.Tensor  # (2,) int64: the side twice; 0 = keep the data's size

    def __init__(self, net: nn.Module, spec: InputSpec, default_mean: Sequence[float] = IMAGENET_MEAN,
                 default_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("input_mean", _three(spec.mean or default_mean).view(1, 3, 1, 1))
        self.register_buffer("input_std", _three(spec.std or default_std).view(1, 3, 1, 1))
        self.register_buffer("input_size", torch.tensor([spec.image_size] * 2, dtype=torch.int64))
        self._size = spec.image_size
        # a loaded checkpoint brings its own size: keep a Python copy so forward never syncs with a GPU
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_size())

    def _refresh_size(self) -> None:
        self._size = int(self.input_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1 or 3, H, W) -> (B, num_classes)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self._size and x.shape[-2:] != (self._size, self._size):
            x = F.interpolate(x, size=(self._size, self._size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.input_mean) / self.input_std)
