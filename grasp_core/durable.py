"""Durable writes: a temporary file beside the target, fsync'd, renamed over it, then the folder fsync'd.

Without the two fsyncs a power cut after `os.replace` can leave an empty or partial file under the final
name (the rename reached the disk before the data). A failed write removes its temporary file, so nothing
half-written is left for DVC to snapshot (temporaries are also `.dvcignore`d: `TMP_GLOB`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"
TMP_GLOB = f".*{TMP_SUFFIX}"  # every temporary this module writes: `.<name>.<pid>.tmp`


def temp_path(path: Path) -> Path:
    """The temporary name for `path`: hidden, in the same folder (so the rename is atomic), per process."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it is fsync'd and renamed to `path` (folder fsync'd too).

    On any error the temporary file is removed and `path` keeps its previous content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """`path.write_bytes(data)`, atomic and durable (see `atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def write_text_durably(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomic and durable (see `atomic_writer`)."""
    write_bytes_durably(path, text.encode())
