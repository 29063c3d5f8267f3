"""torchvision networks of the paper's size class, randomly initialised (weights come from a local
file through `model.weights`, never from a download).

torchvision is imported when one of these is built: its import pulls in torch._dynamo (~1.9 s), which the
default small_cnn never needs.
"""

from __future__ import annotations

from torch import nn

from grasp_core.models import register_architecture
from grasp_core.models.adapter import InputAdapter, InputSpec


@register_architecture("resnet50")
def build_resnet50(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    import torchvision

    return InputAdapter(torchvision.models.resnet50(weights=None, num_classes=num_classes), spec)


@register_architecture("efficientnet_b1")
def build_efficientnet_b1(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    import torchvision

    return InputAdapter(torchvision.models.efficientnet_b1(weights=None, num_classes=num_classes), spec)
