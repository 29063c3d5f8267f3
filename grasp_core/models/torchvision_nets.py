"""torchvision networks of the paper's size class, randomly initialised (weights come from a local
file through `model.weights`, never from a download)."""

from __future__ import annotations

import torchvision
from torch import nn

from grasp_core.models import register_architecture
from grasp_core.models.adapter import InputAdapter, InputSpec


@register_architecture("resnet50")
def build_resnet50(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    return InputAdapter(torchvision.models.resnet50(weights=None, num_classes=num_classes), spec)


@register_architecture("efficientnet_b1")
def build_efficientnet_b1(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    return InputAdapter(torchvision.models.efficientnet_b1(weights=None, num_classes=num_classes), spec)
