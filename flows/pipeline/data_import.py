"""`grasp data import DIR`: write the user's images in the product layout next to `data.root`, pass the
Great Expectations gate, swap the result into place and DVC-track it.

Nothing half-written: the import is written to `.<root>.import-tmp` and only renamed into place after the
gate passes, under the workspace run lock, so a failure leaves the previous data folder as it was.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from flows.pipeline.workspace import Workspace
from flows.runtime.lock import RunLock
from flows.stores.validation import Expected, ValidationReport, validate_dataset
from flows.stores.versioning import TrackedOutput, ensure_repo, track
from grasp_core.config import Config
from grasp_core.data.drift import BASE_DIR
from grasp_core.data.importer import plan_import, write_import
from grasp_core.errors import GraspError


class DataExistsError(GraspError):
    """The data folder exists and --replace was not given."""


@dataclass(frozen=True)
class ImportResult:
    root: Path  # the data folder now holding the import
    record: dict[str, object]  # what write_import recorded (also `<root>/_import.json`)
    validation: ValidationReport
    tracked: TrackedOutput | None  # None when DVC tracking was skipped


def import_data(source: Path, cfg: Config, ws: Workspace, *, replace: bool = False, dvc_remote: str | None = None,
                track_data: bool = True) -> ImportResult:
    """Import `source` into `ws.data(cfg)`; see the module docstring for the guarantees."""
    root = ws.data(cfg)
    if root.exists() and not replace:
        raise DataExistsError(f"{root}: exists; pass --replace to swap in the imported data (the previous "
                              "version stays in the DVC cache and remote)")
    plan = plan_import(source.resolve(), cfg)
    tmp = root.with_name(f".{root.name}.import-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        record = write_import(plan, tmp)
        report = validate_dataset(tmp, ws.root / "reports" / "validation",
                                  expected=Expected.from_config(cfg.validation))
        with RunLock(ws.root, command="grasp data import"):
            _swap(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tracked = None
    if track_data:
        tracked = track(ws.root, cfg.data.root, first=ensure_repo(ws.root, dvc_remote, defer=True))
    return ImportResult(root=root, record=record, validation=report, tracked=tracked)


def _swap(new: Path, root: Path) -> None:
    """Rename `new` to `root`; an old `root` is moved aside first and removed only after the rename."""
    old = root.with_name(f".{root.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    new.rename(root)
    shutil.rmtree(old, ignore_errors=True)


def summary_lines(result: ImportResult, cfg: Config) -> list[str]:
    """What the CLI prints after an import."""
    rec = result.record
    counts: dict[str, dict[str, int]] = rec["counts"]  # type: ignore[assignment]
    layouts: dict[str, str] = rec["layouts"]  # type: ignore[assignment]
    width, height = rec["size_wh"]  # type: ignore[misc]
    lines = [f"{result.root}: imported {len(counts)} domains (oldest first), {len(rec['classes'])} classes, "  # type: ignore[arg-type]
             f"{width}x{height} {rec['mode']} PNG; {rec['resized']} image(s) resized, "
             f"{rec['channel_converted']} converted to {rec['mode']}, {rec['skipped_count']} non-image file(s) skipped"]
    lines += [f"  {d}: " + ", ".join(f"{s} {n}" for s, n in c.items()) + f"  [{layouts[d]}]" for d, c in counts.items()]
    lines += result.validation.summary_lines
    if result.tracked is not None:
        lines.append(f"DVC: {result.tracked.path.name} {result.tracked.md5} ({result.tracked.nfiles} files)")
    if cfg.base.mode == "pretrain" and not (result.root / BASE_DIR / "train").is_dir():
        lines.append("note: imported data has no _base/train pool to pretrain the base; set 'base.mode: init' "
                     "in params.yaml before `grasp run`")
    return lines
