"""The embedded benchmarks `data.generator` names: each writes `<root>/<domain>/{train,val,test}/<class>/*.png`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from grasp_core.config import BaseConfig, DataConfig
from grasp_core.data.complementary import write_digits_complementary
from grasp_core.data.drift import write_digits_drift
from grasp_core.registry import lookup

Generator = Callable[[Path, DataConfig, BaseConfig, int], list[str]]  # (root, data, base, seed) -> domains
GENERATORS: dict[str, Generator] = {
    "digits_drift": write_digits_drift,  # every class everywhere; drift grows with time
    "digits_complementary": write_digits_complementary,  # one drift; each source saw some classes only
}


def get_generator(name: str) -> Generator:
    """The writer registered as `name`; a ConfigError listing the valid names otherwise."""
    return lookup(GENERATORS, name, "data.generator")
