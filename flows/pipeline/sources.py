"""The sources area `checkpoints/sources/`: trained sources and checkpoints that arrive from elsewhere.

A source arrives through `grasp add-source PATH --domain NAME` (validated, copied, DVC-tracked) or
simply as a `<domain>.safetensors` file dropped there; `grasp run` merges every source of the area
that the champion's lineage does not hold yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.pipeline.source_ledger import record_source
from flows.pipeline.workspace import Workspace
from grasp_core.checkpoints import (
    DEFAULT_LIMITS,
    CheckpointHeader,
    SavedCheckpoint,
    check_compatible,
    file_sha256,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from grasp_core.config import LimitsConfig
from grasp_core.data.layout import natural_key
from grasp_core.errors import CheckpointMismatchError, GraspError
from grasp_core.names import check_name, path_inside

ORIGIN_ADDED = "added"  # header extra `origin`: never retrained or overwritten by `grasp run`


class SourceExistsError(GraspError):
    """A source of that domain is already in the sources area."""


@dataclass(frozen=True)
class AreaSource:
    domain: str
    checkpoint: SavedCheckpoint


def reference_header(ws: Workspace) -> CheckpointHeader:
    """What every source must match: the shared base's architecture, classes and input shape."""
    if not ws.base.exists():
        raise CheckpointMismatchError(f"{ws.base}: no base model yet; run `grasp run` once so new sources "
                                      "can be checked against the target's architecture")
    return read_header(ws.base)


def add_source(ws: Workspace, path: Path, domain: str, replace: bool = False,
               limits: LimitsConfig = DEFAULT_LIMITS) -> SavedCheckpoint:
    """Validate `path` (safetensors only: header, architecture, classes, shapes, finite values, tensor
    hash) and copy it into the sources area as `<domain>.safetensors` (atomic)."""
    dest = path_inside(ws.sources, domain, "--domain", suffix=".safetensors")  # before anything is read
    if dest.exists() and not replace:
        raise SourceExistsError(f"{dest}: a source for domain '{domain}' exists; pass --replace to overwrite it")
    like = reference_header(ws)
    if path.suffix != ".safetensors":
        raise CheckpointMismatchError(f"{path}: only .safetensors checkpoints are accepted (pickles are never loaded)")
    model, header = load_checkpoint(path, like=like, limits=limits)  # caps checked before any tensor is read
    extra = {**header.extra, "domain": domain, "origin": ORIGIN_ADDED, "added_from_sha256": file_sha256(path)}
    saved = save_checkpoint(model, dest, CheckpointHeader(like.arch, like.num_classes, like.classes,
                                                          like.input_shape, extra))
    record_source(ws, domain, saved.sha256, ORIGIN_ADDED)
    return saved


@dataclass(frozen=True)
class BadSource:
    path: Path
    reason: str  # the refusal, naming the file


class BadSourceError(GraspError):
    """Source checkpoints at run time were refused and `on_bad_source` is `fail`."""


_IGNORED = (".dvc", ".tmp", ".gitignore", ".json")  # bookkeeping next to the checkpoints, never a source


def scan_area(ws: Workspace, target: str,
              limits: LimitsConfig = DEFAULT_LIMITS) -> tuple[list[AreaSource], list[BadSource]]:
    """Every file of the sources area, fully checked as add-source checks it, except the target's own.

    A checkpoint passes when it is a grasp safetensors file (never unpickled) whose header matches the base
    (architecture, classes, input shape) and whose tensors load with the header's names, shapes and hash and
    hold finite values. Returns (good sources in domain order, refused files with the reason).
    """
    good, bad = [], []
    files = sorted((p for p in ws.sources.iterdir() if p.is_file()), key=lambda p: natural_key(p.stem)) \
        if ws.sources.is_dir() else []
    like = reference_header(ws) if files else None
    for path in files:
        if path.name.startswith(".") or path.name.endswith(_IGNORED) or path.stem == target:
            continue
        if path.suffix != ".safetensors":
            bad.append(BadSource(path, f"{path}: not a .safetensors checkpoint (pickles are never loaded)"))
            continue
        try:
            check_name(path.stem, f"{path}: file name")
            check_name(read_header(path, limits).extra.get("domain", path.stem), f"{path}: header 'domain'")
            _, header = load_checkpoint(path, like=like, limits=limits)  # compatibility, tensors, hashes, finite
        except GraspError as err:
            bad.append(BadSource(path, str(err)))
            continue
        good.append(AreaSource(path.stem, SavedCheckpoint(path, file_sha256(path), header)))
    return good, bad


def refuse_or_skip(bad: list[BadSource], policy: str) -> None:
    """`on_bad_source: fail` -> raise naming every refused file; `skip` -> nothing (the caller records them)."""
    if bad and policy == "fail":
        lines = "\n".join(f"  {b.reason}" for b in bad)
        raise BadSourceError(f"{len(bad)} source checkpoint(s) refused; nothing was merged or registered "
                             f"(set 'on_bad_source: skip' in params.yaml to merge the others):\n{lines}")


def area_sources(ws: Workspace, target: str) -> list[AreaSource]:
    """Every source checkpoint in the area except the target's, in domain (time) order."""
    out = []
    paths = sorted(ws.sources.glob("*.safetensors"), key=lambda p: natural_key(p.stem)) if ws.sources.exists() else []
    for path in paths:
        if path.stem != target:
            out.append(AreaSource(path.stem, SavedCheckpoint(path, file_sha256(path), read_header(path))))
    return out


def check_area_source(ws: Workspace, source: AreaSource) -> None:
    """Refuse a dropped-in file that does not match the base (same checks as add-source)."""
    check_compatible(source.checkpoint.path, source.checkpoint.header, reference_header(ws))
