"""Names that become parts of paths (domains, model names, report names), checked in one place.

A domain name comes from a CLI flag, a checkpoint header written by anyone who can drop a file into the
sources area, or a folder name; each ends up in a path (`checkpoints/sources/<domain>.safetensors`,
`checkpoints/targets/<target>/stage00-<domain>-....safetensors`, `reports/lineage-<model>.png`). One
conservative pattern for all of them, and a second check that the built path stays inside its folder,
so `../../escaped`, an absolute path or a separator can never steer a write.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from grasp_core.errors import GraspError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RULE = "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"


class UnsafeNameError(GraspError):
    """A name that would become part of a path is not a plain, safe file name."""


def is_safe_name(name: object) -> bool:
    """True for a string that is one plain path component under the conservative pattern."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and ".." not in name


def check_name(name: object, what: str) -> str:
    """Return `name` unchanged, or raise UnsafeNameError naming `what` (e.g. `--domain`, `<file>: header domain`)."""
    if not is_safe_name(name):
        raise UnsafeNameError(f"{what}: {str(name)[:80]!r} is not a safe name; {RULE}")
    return str(name)


def path_inside(folder: Path, name: str, what: str, prefix: str = "", suffix: str = "") -> Path:
    """`folder / (prefix + name + suffix)` after checking `name` and that the result stays inside `folder`.

    The second check is belt and braces: the pattern already forbids separators and `..`, but a prefix or
    suffix from a caller, or a symlinked sub-folder, must not be able to lead outside either.
    """
    check_name(name, what)
    path = folder / f"{prefix}{name}{suffix}"
    root = folder.resolve()
    normal = Path(os.path.normpath(root / path.name))  # the file itself is not resolved: a link is replaced
    if normal.parent != root or normal.name != path.name or path.name != f"{prefix}{name}{suffix}":
        raise UnsafeNameError(f"{what}: {name!r} would write {normal}, outside {root}; {RULE}")
    return path
