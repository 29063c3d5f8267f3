"""The default architecture: a small CNN with BatchNorm that trains a domain in seconds on 2 cores."""

from __future__ import annotations

import torch
from torch import nn

from grasp_core.errors import ConfigError
from grasp_core.models import register_architecture
from grasp_core.models.adapter import InputSpec


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU), global average pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.features = nn.Sequential(block(in_channels, width, 1), block(width, 2 * width, 2),
                                      block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


@register_architecture("small_cnn")
def build_small_cnn(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    if not spec.is_default():  # no silent ignore: the small CNN reads the data as they are
        raise ConfigError("'model.image_size', 'model.mean' and 'model.std' apply to the ImageNet-family "
                          "architectures; for 'model.arch: small_cnn' leave them at 0 and []")
    return SmallCNN(num_classes, in_channels=input_shape[0])
