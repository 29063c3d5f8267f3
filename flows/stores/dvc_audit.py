"""What DVC recorded for a tracked output against what is on disk: the md5 of each file as recorded at
`dvc add` (read through `dvc.api.DVCFileSystem`, never DVC's cache layout), and a re-hash audit.

Used by `grasp lineage --verify` and by the stage tags (a source's DVC md5)."""

from __future__ import annotations

import functools
import hashlib
import posixpath
from pathlib import Path

from flows.stores.versioning import VersioningError, output_path, read_out


def recorded_files(ws: Path, dvcfile: Path) -> dict[str, str]:
    """{path inside the tracked output: md5} as DVC recorded them at `dvc add`; a single file has the path ''.

    DVC resolves a folder's listing itself (`dvc.api.DVCFileSystem`: from its cache, else from its remote).
    """
    out = read_out(dvcfile)
    if not out["md5"].endswith(".dir"):
        return {"": out["md5"]}
    root = (dvcfile.parent / out["path"]).resolve().relative_to(ws.resolve()).as_posix()
    return dict(_listing(str(ws.resolve()), root, out["md5"], dvcfile.name))


@functools.lru_cache(maxsize=8)
def _listing(ws: str, root: str, md5: str, dvcfile: str) -> tuple[tuple[str, str], ...]:
    """The files DVC recorded under `root` of project `ws`; keyed by the folder's md5, so each is read once."""
    from dvc.api import DVCFileSystem

    try:
        found = DVCFileSystem(ws).find(root, detail=True, dvc_only=True)
        return tuple(sorted((posixpath.relpath(path, root), info["md5"]) for path, info in found.items()))
    except Exception as err:  # DVC raises its own errors (object missing, remote unreachable) and OSError
        raise VersioningError(f"{Path(ws) / dvcfile}: listing {md5} is neither in the DVC cache nor on the remote "
                              f"({err!r}); run `dvc fetch {dvcfile}`") from None


def _expected(ws: Path, dvcfile: Path) -> tuple[Path, dict[str, str]]:
    """The tracked output's path and {relpath inside it: md5}; a single file has the relpath ''."""
    return output_path(dvcfile), recorded_files(ws, dvcfile)


def file_md5_in_dir(ws: Path, dvcfile: Path, relpath: str) -> str | None:
    """The md5 DVC recorded for one file of a tracked folder, or None if the folder holds no such file.

    Args:
        relpath: Path inside the tracked folder (`a.safetensors`) or relative to `ws`
            (`checkpoints/sources/a.safetensors`).
    """
    root, expected = _expected(ws, dvcfile)
    prefix = root.relative_to(ws.resolve()).as_posix()
    rel = Path(relpath).as_posix()
    rel = "" if rel == prefix else rel.removeprefix(f"{prefix}/")
    return expected.get(rel)


def _file_md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def verify(ws: Path, dvcfile: Path) -> list[str]:
    """Re-hash a tracked output; return the paths (relative to `ws`) changed, missing or added since `dvc add`."""
    root, expected = _expected(ws, dvcfile)
    if root.is_dir():
        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    else:
        on_disk = {""} if root.is_file() else set()
    bad = {rel for rel, md5 in expected.items() if rel not in on_disk or _file_md5(root / rel) != md5}
    bad |= on_disk - expected.keys()
    base = root.relative_to(ws.resolve())
    return sorted((base / rel).as_posix() for rel in bad)
