"""Architecture registry: `build_model(name, num_classes, input_shape, spec)`.

Add an architecture by decorating a builder with `@register_architecture("name")` in a module
imported at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from grasp_core.errors import UnknownArchitectureError
from grasp_core.models.adapter import InputSpec
from grasp_core.registry import lookup, registrar

Builder = Callable[[int, tuple[int, int, int], InputSpec], nn.Module]
ARCHITECTURES: dict[str, Builder] = {}


register_architecture = registrar(ARCHITECTURES, "architecture")


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int],
                spec: InputSpec | None = None) -> nn.Module:
    """A freshly initialised model; `input_shape` is (C, H, W) of the data, `spec` the network's own input
    size and normalisation (`model.image_size`, `model.mean`, `model.std`; a checkpoint restores its own)."""
    builder = lookup(ARCHITECTURES, name, "model.arch", UnknownArchitectureError)
    return builder(num_classes, tuple(input_shape), spec or InputSpec())  # type: ignore[arg-type]


def input_spec(image_size: int, mean: list[float], std: list[float]) -> InputSpec:
    return InputSpec(image_size=image_size, mean=tuple(mean), std=tuple(std))


from grasp_core.models import small_cnn, timm_nets, torchvision_nets  # noqa: E402,F401  (fill the registry)
