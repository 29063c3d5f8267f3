"""DVC versioning of a workspace: git + DVC init, a default remote, `dvc add` + `dvc push`, and hashes.

DVC takes a repo lock, so every DVC command here runs alone (one module lock). Analytics are always off
(`DVC_NO_ANALYTICS=1`): DVC 3.67's analytics daemon crashes on import and leaves a /tmp/tmpXXXX report per command.
Nothing here reads or writes DVC's cache or remote layout: commands go through DVC's CLI, the hashes recorded
inside a tracked folder come from `dvc.api.DVCFileSystem`, and .dvc files are read as DVC documents them.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.stores.dvc_batch import FAILED
from flows.stores.fingerprints import fingerprint
from grasp_core.durable import TMP_GLOB, write_text_durably
from grasp_core.errors import GraspError

_log = logging.getLogger(__name__)

REMOTE_NAME = "local"
DEFAULT_REMOTE_DIR = ".dvc-remote"
STAMPS = Path(".grasp") / "dvc-track"  # grasp's own record of what DVC added and pushed (not inside .dvc/)
# dvc.yaml: params.yaml as a top-level params file (`dvc params diff` shows every changed key) and no stage, so
# `dvc status` is clean after a run; grasp <= 0.1 wrote a `grasp` stage that never ran (OLD_DVC_YAML, replaced)
DVC_YAML = {"params": ["params.yaml"]}
# Folders holding copies of old .dvc pointers (each version keeps its own as MLflow artifacts, flows/ops/restore.py):
# DVC must not read them as the workspace's own, else `dvc status` reports their outputs deleted
DVCIGNORE = ("/mlartifacts/", "/reports/")
OLD_DVC_YAML = {"stages": {"grasp": {"cmd": "grasp run", "params": [{"params.yaml": None}], "deps": ["data"]}}}
_DVC_LOCK = threading.Lock()


class VersioningError(GraspError):
    """A git or DVC command failed on a workspace, or a .dvc file or its manifest is unreadable."""


@dataclass(frozen=True)
class TrackedOutput:
    """One DVC-tracked output, as its .dvc file records it."""

    path: Path  # the .dvc file
    md5: str  # '<32 hex>.dir' for a directory
    size: int  # bytes, all files together
    nfiles: int


def _run(ws: Path, name: str, exe: list[str], args: tuple[str, ...], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [*exe, *args], cwd=ws, env={**os.environ, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True
    )
    if check and out.returncode != 0:
        lines = [line.strip() for line in (out.stderr or out.stdout).splitlines() if line.strip()]
        raise VersioningError(f"{ws}: `{name} {' '.join(args)}` failed: {lines[-1] if lines else out.returncode}")
    return out


def _git(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(ws, "git", ["git"], args, check)


def _dvc(ws: Path, *commands: tuple[str, ...]) -> None:
    """Run DVC `commands` in order, in one Python process (flows.stores.dvc_batch: DVC's import is paid once).

    `-q` would hide DVC's ERROR line too, so output is captured; a failure names the command that failed.
    """
    if not commands:
        return
    with _DVC_LOCK:
        out = subprocess.run([sys.executable, "-m", "flows.stores.dvc_batch", json.dumps(commands)], cwd=ws,
                             env={**os.environ, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line.strip() for line in (out.stderr or out.stdout).splitlines() if line.strip()]
        failed = next((int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(FAILED)), None)
        lines = [line for line in lines if not line.startswith(FAILED)]
        name = " ".join(commands[failed]) if failed is not None else " + ".join(" ".join(c) for c in commands)
        raise VersioningError(f"{ws}: `dvc {name}` failed: {lines[-1] if lines else out.returncode}")


def run_dvc(ws: Path, *commands: tuple[str, ...]) -> None:
    """Run DVC CLI `commands` in `ws`, in order, in one process; a failure is a VersioningError naming it."""
    _dvc(ws, *commands)


def cache_dir(ws: Path) -> str:
    """The cache folder of DVC project `ws`, as DVC reports it (`dvc cache dir`)."""
    return _run(ws, "dvc", [sys.executable, "-m", "dvc"], ("cache", "dir")).stdout.strip()


def _git_top(ws: Path) -> Path | None:
    """The enclosing git work tree of `ws`, or None (also when that tree git-ignores `ws`)."""
    out = _git(ws, "rev-parse", "--show-toplevel", check=False)
    if out.returncode != 0:
        return None
    top = Path(out.stdout.strip()).resolve()
    if top != ws and _git(top, "check-ignore", "-q", f"{ws.relative_to(top).as_posix()}/", check=False).returncode == 0:
        return None
    return top


def _dvc_config(ws: Path) -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read([ws / ".dvc" / "config", ws / ".dvc" / "config.local"])
    return config


def remote_url(ws: Path) -> str | None:
    """The default remote's URL; a local folder comes back as an absolute path."""
    config = _dvc_config(ws)
    name = config.get("core", "remote", fallback=None)
    url = config.get(f"'remote \"{name}\"'", "url", fallback=None) if name else None
    if url is None or "://" in url:
        return url
    return str((ws / ".dvc" / url).resolve())  # DVC writes local paths relative to .dvc/


def _ensure_ignored(ws: Path, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)  # check-ignore only matches a folder pattern on a folder
    rel = path.relative_to(ws).as_posix()
    if _git(ws, "check-ignore", "-q", rel, check=False).returncode != 0:
        gitignore = ws / ".gitignore"
        text = gitignore.read_text() if gitignore.exists() else ""
        gitignore.write_text(text + ("\n" if text and not text.endswith("\n") else "") + f"/{rel}/\n")


def _wanted_remote(ws: Path, remote: str | None) -> tuple[str, Path | None, bool]:
    """(URL, local folder or None, whether the remote is already the default): what `ensure_repo` points to."""
    url = remote or str(ws / DEFAULT_REMOTE_DIR)
    folder = None if "://" in url else Path(url).resolve()
    is_set = remote_url(ws) == str(folder or url) and \
        _dvc_config(ws).get("core", "remote", fallback=None) == REMOTE_NAME
    return url, folder, is_set


def _ensure_remote(ws: Path, remote: str | None) -> list[tuple[str, ...]]:
    """The DVC command that (re-)points the default remote, when needed; git-ignores a folder inside `ws`."""
    url, folder, is_set = _wanted_remote(ws, remote)
    inside = folder is not None and folder.is_relative_to(ws)
    commands: list[tuple[str, ...]] = []
    if not is_set:
        # a folder inside the workspace is stored relative to it, so a committed .dvc/config stays portable
        arg = folder.relative_to(ws).as_posix() if folder is not None and inside else str(folder or url)
        commands.append(("remote", "add", "--force", "--default", REMOTE_NAME, arg))
    if folder is not None and inside:
        _ensure_ignored(ws, folder)
    return commands


def ensure_repo(ws: Path, remote: str | None = None, defer: bool = False) -> list[tuple[str, ...]]:
    """Make `ws` a git + DVC repo with analytics off, a default remote and a dvc.yaml naming params.yaml;
    idempotent. No stage: the data and the source checkpoints are DVC-tracked outputs (`dvc add`).

    Args:
        ws: The workspace folder; a subfolder of a git repo gets `dvc init --subdir`.
        remote: URL or folder (relative to the current directory) of the default remote `local`; else
            `<ws>/.dvc-remote` (the CLI passes --dvc-remote, else $GRASP_DVC_REMOTE). A new value re-points it.
        defer: return the DVC commands still to run instead of running them (`track(..., first=...)` runs
            them in the same process as its add and push).
    """
    ws = ws.resolve()
    if not ws.is_dir():
        raise VersioningError(f"{ws}: no such folder; create the workspace first")
    top = _git_top(ws)
    if top is None:
        _git(ws, "init", "-q")
    if _git(ws, "config", "user.email", check=False).returncode != 0:
        _git(ws, "config", "user.name", "grasp")
        _git(ws, "config", "user.email", "grasp@localhost")
    commands: list[tuple[str, ...]] = []
    if not (ws / ".dvc").is_dir():
        commands.append(("init", *(["--subdir"] if top is not None and top != ws else [])))
    if _dvc_config(ws).get("core", "analytics", fallback="") != "false":
        commands.append(("config", "core.analytics", "false"))
    commands += _ensure_remote(ws, remote)
    _write_dvc_yaml(ws)
    ignore_temporaries(ws)
    _ensure_dvcignore(ws)
    if defer:
        return commands
    _dvc(ws, *commands)
    return []


def _ensure_dvcignore(ws: Path) -> None:
    """Add the DVCIGNORE patterns to `.dvcignore` (`dvc init` keeps an existing one)."""
    path = ws / ".dvcignore"
    text = path.read_text() if path.exists() else ""
    missing = [p for p in DVCIGNORE if p not in text.splitlines()]
    if missing:
        path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "\n".join(missing) + "\n")


def _write_dvc_yaml(ws: Path) -> None:
    """DVC_YAML when there is no dvc.yaml or only the one grasp <= 0.1 wrote; any other dvc.yaml is the user's."""
    path = ws / "dvc.yaml"
    try:
        if path.exists() and yaml.safe_load(path.read_text()) != OLD_DVC_YAML:
            return
    except yaml.YAMLError:
        return
    path.write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))


def read_out(dvcfile: Path) -> dict[str, Any]:
    try:
        out = yaml.safe_load(dvcfile.read_text())["outs"][0]
        if not isinstance(out.get("md5"), str) or not isinstance(out.get("path"), str):
            raise KeyError("md5/path")
        return out
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise VersioningError(
            f"{dvcfile}: not a .dvc file with one hashed output ({err!r}); run `dvc add` on its target"
        ) from None


def output_path(dvcfile: Path) -> Path:
    """The folder or file a .dvc file tracks."""
    return (dvcfile.parent / read_out(dvcfile)["path"]).resolve()


def read_dvc_hash(dvcfile: Path) -> str:
    """The md5 a .dvc file records for its output (`<32 hex>.dir` for a folder)."""
    return read_out(dvcfile)["md5"]


def _dvcfile_for(ws: Path, target: str) -> Path:
    """`<target>.dvc`, or `<target with / as ->.dvc` at the root when git ignores the natural spot.

    DVC refuses a git-ignored .dvc file, and git cannot un-ignore a file inside an ignored folder
    (`/checkpoints/` hides `checkpoints/sources.dvc`). DVC updates whichever .dvc file tracks the target.
    """
    natural, fallback = ws / f"{target}.dvc", ws / f"{target.replace('/', '-')}.dvc"
    for existing in (natural, fallback):
        if existing.exists():
            return existing
    if _git(ws, "check-ignore", "-q", f"{target}.dvc", check=False).returncode != 0:
        return natural
    fallback.write_text(yaml.safe_dump({"outs": [{"path": target}]}, sort_keys=False))
    return fallback


def _is_unchanged(stamp_file: Path, stamp: dict[str, str | None], dvcfile: Path, pushed_too: bool = True) -> bool:
    """Added since the last change and, with `pushed_too`, pushed as well: the stamp records what DVC itself
    reported (written only after its `dvc add` / `dvc push` succeeded) for these very files (fingerprint), this
    .dvc file and this remote. An object deleted behind DVC's back (a wiped remote) is not re-checked here: that
    costs a DVC process per output on every run; `dvc status --cloud` finds it and `dvc push` mends it."""
    if not stamp_file.exists() or not dvcfile.exists():
        return False
    try:
        recorded = json.loads(stamp_file.read_text())
    except (OSError, ValueError):  # truncated or garbled (a crash mid-write before 0.2): add and push again
        _log.warning("%s: unreadable stamp; re-adding and re-pushing %s", stamp_file, dvcfile.name)
        return False
    if not isinstance(recorded, dict):
        return False
    was_pushed = recorded.pop("pushed", True) is True  # stamps before add/push were split: written after a push
    return recorded == {**stamp, "md5": read_dvc_hash(dvcfile)} and (was_pushed or not pushed_too)


def _tracked(dvcfile: Path) -> TrackedOutput:
    out = read_out(dvcfile)
    return TrackedOutput(path=dvcfile, md5=out["md5"], size=int(out.get("size", 0)), nfiles=int(out.get("nfiles", 1)))


def track(ws: Path, target: str, first: list[tuple[str, ...]] | None = None, push: bool = True) -> TrackedOutput:
    """`dvc add <target>` then `dvc push` its .dvc file; skips both when nothing changed since the last push.

    Args:
        ws: A workspace prepared by `ensure_repo` (or about to be: see `first`).
        target: Path relative to `ws`, e.g. `data` (-> data.dvc) or `checkpoints/sources` (-> checkpoints/sources.dvc,
            or checkpoints-sources.dvc where git ignores `checkpoints/`).
        first: DVC commands `ensure_repo(..., defer=True)` left to run; they run first, in the same process.
        push: False: `dvc add` only, so its hash is known sooner; `push_tracked` pushes it later.
    """
    ws = ws.resolve()
    target = (Path(target).resolve().relative_to(ws) if Path(target).is_absolute() else Path(target)).as_posix()
    if not (ws / target).exists():
        raise VersioningError(f"{ws / target}: nothing to track; create it first (e.g. `grasp data`)")
    dvcfile, stamp_file, stamp = _stamp(ws, target)
    if not first and _is_unchanged(stamp_file, stamp, dvcfile, pushed_too=push):
        return _tracked(dvcfile)
    rel = dvcfile.relative_to(ws).as_posix()
    _dvc(ws, *(first or []), ("add", target), *([("push", rel)] if push else []))
    tracked = _tracked(dvcfile)
    _, _, stamp = _stamp(ws, target)  # after `dvc add`, which may relink files; `first` may set the remote
    _write_stamp(stamp_file, stamp, tracked, pushed=push)
    return tracked


def is_current(ws: Path, target: str, remote: str | None = None) -> bool:
    """True when `ensure_repo(ws, remote)` then `track(ws, target)` would run no DVC command: a DVC repo whose
    default remote is already `remote`, and `target` added and pushed there, unchanged since (the same stamp
    `track` trusts). Read-only: no DVC or git process, nothing written."""
    ws = ws.resolve()
    target = (Path(target).resolve().relative_to(ws) if Path(target).is_absolute() else Path(target)).as_posix()
    if not (ws / ".dvc").is_dir() or _dvc_config(ws).get("core", "analytics", fallback="") != "false" or \
            not _wanted_remote(ws, remote)[2]:
        return False
    if not any((ws / name).is_file() for name in (f"{target}.dvc", f"{target.replace('/', '-')}.dvc")):
        return False  # never added (finding where its .dvc file would go asks git)
    dvcfile, stamp_file, stamp = _stamp(ws, target)
    try:
        return _is_unchanged(stamp_file, stamp, dvcfile)
    except VersioningError:  # a hand-edited .dvc file: the run's `dvc add` rewrites it
        return False


def push_tracked(ws: Path, tracked: TrackedOutput) -> TrackedOutput:
    """`dvc push` an output that `track(..., push=False)` added (a no-op when it was unchanged and pushed)."""
    ws = ws.resolve()
    target = (tracked.path.parent / read_out(tracked.path)["path"]).resolve().relative_to(ws).as_posix()
    dvcfile, stamp_file, stamp = _stamp(ws, target)
    if not _is_unchanged(stamp_file, stamp, dvcfile):
        _dvc(ws, ("push", dvcfile.relative_to(ws).as_posix()))
        _write_stamp(stamp_file, stamp, tracked)
    return _tracked(dvcfile)


def ignore_temporaries(ws: Path) -> None:
    """List the temporaries of `grasp_core.durable` in `.dvcignore`, so a write that died half-way never enters
    a DVC snapshot (its file is removed on failure; a SIGKILL can still leave one)."""
    path = ws / ".dvcignore"
    text = path.read_text() if path.is_file() else ""
    if TMP_GLOB not in text.splitlines():
        path.write_text(text + ("\n" if text and not text.endswith("\n") else "") +
                        f"# grasp: temporary files of interrupted writes\n{TMP_GLOB}\n")


def _stamp(ws: Path, target: str) -> tuple[Path, Path, dict[str, str | None]]:
    """(.dvc file, stamp file, stamp): the stamp of the last push lets an unchanged output skip add and push."""
    dvcfile = _dvcfile_for(ws, target)
    stamp_file = ws / STAMPS / f"{target.replace('/', '-')}.json"
    return dvcfile, stamp_file, {"dvcfile": dvcfile.name, "remote": remote_url(ws),
                                 "fingerprint": fingerprint(ws / target)}


def _write_stamp(stamp_file: Path, stamp: dict[str, str | None], tracked: TrackedOutput,
                 pushed: bool = True) -> None:
    write_text_durably(stamp_file, json.dumps({**stamp, "md5": tracked.md5, "pushed": pushed}))


def git_commit(ws: Path, paths: list[str], message: str) -> str | None:
    """Commit only `paths` (those that exist, relative to `ws`); return the new commit sha, or None if unchanged."""
    present = [p for p in paths if (ws / p).exists()]
    if not present:
        return None
    _git(ws, "add", "--", *present)
    if _git(ws, "diff", "--cached", "--quiet", "--", *present, check=False).returncode == 0:
        return None
    _git(ws, "commit", "-q", "-m", message, "--", *present)
    return _git(ws, "rev-parse", "HEAD").stdout.strip()
