"""Stat fingerprints of files and folders: (relative path, size, mtime, inode) of every file, hashed: the
same key DVC's own state cache trusts. DVC's skip stamps, GX's pass record and the nothing-new check compare
them (an edit, an added or a removed file changes the fingerprint; reading a file does not)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

_HELD: dict[str, str] | None = None  # see fingerprints_held


@contextlib.contextmanager
def fingerprints_held() -> Iterator[None]:
    """Within the block each path is fingerprinted once: a read-only check under the workspace lock (the CLI's
    `grasp run` with nothing new) reads the same folders through its own, DVC's and GX's records. Not for code
    that writes the files meanwhile."""
    global _HELD
    previous, _HELD = _HELD, {}
    try:
        yield
    finally:
        _HELD = previous


def fingerprint(path: Path) -> str:
    """Hash of (relpath, size, mtime, inode) of every file: what DVC's own state cache keys on."""
    if _HELD is None:
        return _fingerprint(path)
    key = os.path.abspath(path)
    if key not in _HELD:
        _HELD[key] = _fingerprint(path)
    return _HELD[key]


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_file():  # "." as os.path.relpath(path, path) gave before: recorded stamps stay valid
        st = path.stat()
        digest.update(f".\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        return digest.hexdigest()
    top = str(path)
    for root, dirs, files in os.walk(top):
        dirs.sort()
        # os.walk yields `top` and `top/<sub>`: slicing gives what os.path.relpath would, at a fraction of its
        # cost (it normalises both paths per file; a data folder holds thousands)
        sub = root[len(top) + 1:]
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            rel = os.path.join(sub, name) if sub else name
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return digest.hexdigest()
