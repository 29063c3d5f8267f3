"""torchvision networks of the paper's size class, randomly initialised (weights come from a local
file through `model.weights`, never from a download)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from grasp_core.models import register_architecture


class GreyToRGB(nn.Module):
    """Wrap an RGB network so that 1-channel inputs are repeated to 3 channels."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1 or 3, H, W)
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


@register_architecture("resnet50")
def build_resnet50(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return GreyToRGB(torchvision.models.resnet50(weights=None, num_classes=num_classes))


@register_architecture("efficientnet_b1")
def build_efficientnet_b1(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return GreyToRGB(torchvision.models.efficientnet_b1(weights=None, num_classes=num_classes))
