"""MobileViT from timm (the optional extra `pip install 'grasp[timm]'`), the paper's small networks.

timm is imported when a model is built, so the core imports without it. Always `pretrained=False`:
timm would reach for the Hugging Face hub; weights come from a local file through `model.weights`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from grasp_core.errors import ConfigError
from grasp_core.models import register_architecture
from grasp_core.models.adapter import InputAdapter, InputSpec


def _timm_model(name: str, num_classes: int, spec: InputSpec) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"'model.arch' = '{name}' needs timm; install the extra: pip install -e '.[timm]'") from None
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    cfg: dict[str, Any] = net.pretrained_cfg  # type: ignore[assignment]  # mobilevit: mean 0, std 1 (the network expects plain [0, 1] pixels)
    return InputAdapter(net, spec, default_mean=cfg["mean"], default_std=cfg["std"])


@register_architecture("mobilevit_xxs")
def build_mobilevit_xxs(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    return _timm_model("mobilevit_xxs", num_classes, spec)


@register_architecture("mobilevit_xs")
def build_mobilevit_xs(num_classes: int, input_shape: tuple[int, int, int], spec: InputSpec) -> nn.Module:
    return _timm_model("mobilevit_xs", num_classes, spec)
