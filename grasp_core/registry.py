"""One registry pattern for architectures, transfer policies and methods (timm/mergekit style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from grasp_core.errors import ConfigError

T = TypeVar("T")


def registrar(entries: dict[str, T], kind: str) -> Callable[[str], Callable[[T], T]]:
    """A `@register("name")` decorator that fills `entries` and refuses duplicates."""

    def register(name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            if name in entries:
                raise ValueError(f"{kind} '{name}' registered twice")
            entries[name] = entry
            return entry

        return decorate

    return register


def lookup(entries: dict[str, T], name: str, key: str, error: type[ConfigError] = ConfigError) -> T:
    """`entries[name]`, or an error naming the params.yaml key and every valid name."""
    if name not in entries:
        raise error(f"'{key}' = '{name}' is unknown; choose one of: {', '.join(sorted(entries))}")
    return entries[name]
