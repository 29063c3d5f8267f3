"""`grasp restore VERSION|@alias [--to DIR]`: bring back the exact data and source checkpoints of a version.

Each registered version keeps, as MLflow artifacts of its stage run (`dvc/`), the `.dvc` pointer files of the
data and of the source checkpoints it was trained on (flows/pipeline/tasks.py `register_task`). Restoring puts those
pointers back and lets DVC materialise what they name: `dvc pull --force`, from the DVC cache, else from the
remote. Into the workspace itself (the default), `grasp lineage VERSION --verify` then passes. Into another
folder (`--to DIR`), DIR becomes a DVC project of its own (no git) that reads the workspace's remote and
shares its cache.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.stores.stage_runs import POINTERS
from flows.stores.tracking import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class Restored:
    model_name: str
    version: str
    dest: Path
    pointers: list[str]  # .dvc files put back, relative to `dest`
    hashes: dict[str, str]  # pointer -> the md5 DVC recorded


def restore(ws: Path, tracking_uri: str | None, ref: str, model_name: str | None = None,
            to: Path | None = None) -> Restored:
    """Materialise the data and source checkpoints of version `ref` into `to` (default: the workspace)."""
    from flows.stores.registry import open_registry, resolve_model_name, resolve_version
    from flows.stores.versioning import VersioningError, ensure_repo, read_dvc_hash

    ws = ws.resolve()
    tracker = open_registry(ws, tracking_uri)
    name = resolve_model_name(tracker.client, model_name, tracker.tracking_uri)
    version = resolve_version(tracker.client, name, ref)
    dest = (to or ws).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        pointers = _download_pointers(tracker.client, name, version.version, version.run_id or "", Path(tmp))
        if dest != ws:
            _prepare_copy(ws, dest)
        elif not (ws / ".dvc").is_dir():
            ensure_repo(ws)
        for rel in pointers:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / POINTERS / rel, dest / rel)
    try:
        _pull(dest, pointers)
    except VersioningError as err:
        raise VersioningError(f"{name} v{version.version}: {err}; is the DVC remote of {ws} reachable?") from None
    return Restored(name, str(version.version), dest, pointers, {p: read_dvc_hash(dest / p) for p in pointers})


def _download_pointers(client: MlflowClient, name: str, version: str, run_id: str, tmp: Path) -> list[str]:
    """Download the run's `dvc/` artifacts into `tmp`; the .dvc paths inside it. A version without them (one
    registered before grasp 0.2) is a one-line error."""
    try:
        client.download_artifacts(run_id, POINTERS, str(tmp))
    except Exception as err:  # MLflow raises its own or OSError for a missing artifact folder
        raise TrackingError(f"{name} v{version}: no .dvc pointer files among its run's artifacts ({err}); "
                            "versions registered before grasp 0.2 cannot be restored") from None
    root = tmp / POINTERS
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dvc"))
    if not found:
        raise TrackingError(f"{name} v{version}: the run's `{POINTERS}/` artifacts hold no .dvc file")
    return found


def _prepare_copy(ws: Path, dest: Path) -> None:
    """`dest` as a DVC project without git, reading the workspace's remote and sharing its cache."""
    from flows.stores.versioning import REMOTE_NAME, VersioningError, cache_dir, remote_url, run_dvc

    url = remote_url(ws)
    if url is None:
        raise VersioningError(f"{ws}: no DVC remote configured; run `grasp run` there first")
    dest.mkdir(parents=True, exist_ok=True)
    init = [] if (dest / ".dvc").is_dir() else [("init", "--no-scm")]
    run_dvc(dest, *init, ("config", "core.analytics", "false"), ("remote", "add", "--force", "--default",
                                                               REMOTE_NAME, url),
         ("cache", "dir", cache_dir(ws)))


def _pull(dest: Path, pointers: list[str]) -> None:
    from flows.stores.versioning import run_dvc

    run_dvc(dest, ("pull", "--force", *pointers))
