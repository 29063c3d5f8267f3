"""Summary tables of a data folder (`<root>/<domain>/{train,val,test}/<class>/*.png`): one row per split and
one row per file, as plain Python values, for the data validation gate in `flows/stores/validation.py`.

Pure: reads each file once (bytes -> sha256 -> PIL decode from memory) and judges nothing; the gate decides.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from grasp_core.data.layout import IMAGE_SUFFIXES, SPLITS, list_domains

Row = dict[str, str | int | float | bool | None]
SPLIT_COLUMNS = ("domain", "split", "present", "image_count", "class_count", "classes", "min_per_class",
                 "per_class_counts", "height_min", "height_max", "width_min", "width_max", "channels", "pixel_min",
                 "pixel_max", "pixel_mean", "unreadable_count", "duplicate_count", "label_min", "label_max")
FILE_COLUMNS = ("domain", "split", "class_name", "label", "path", "sha256", "readable", "height", "width", "channels",
                "pixel_min", "pixel_max", "pixel_mean")
# The modes that grasp_core.data.layout reads as one grey channel; it reads every other mode as RGB.
GREY_MODES = ("L", "1", "P", "I;16")
_NO_STATS: Row = {"height": None, "width": None, "channels": None, "pixel_min": None, "pixel_max": None,
                  "pixel_mean": None}


@dataclass(frozen=True)
class SummaryTables:
    """What `summarise` found under `root`: two tables as lists of plain dicts."""

    root: Path
    classes: tuple[str, ...]  # the first domain's train classes; a file's `label` indexes this
    splits: list[Row]  # one row per (domain, split), expected or found
    files: list[Row]  # one row per file inside a class folder


@dataclass(frozen=True)
class ImageStats:
    """One decoded image, as layout.py would read it; pixels on the 0-255 scale."""

    height: int
    width: int
    channels: int
    pixel_min: int
    pixel_max: int
    pixel_mean: float


@dataclass(frozen=True)
class _File:
    domain: str
    split: str
    class_name: str
    label: int
    path: str
    sha256: str
    stats: ImageStats | None  # None: unreadable

    def row(self) -> Row:
        head = {k: v for k, v in vars(self).items() if k != "stats"}
        return {**head, "readable": self.stats is not None, **(vars(self.stats) if self.stats else _NO_STATS)}


def summarise(root: Path) -> SummaryTables:
    """Summarise every expected domain split and every file under `root`.

    Split rows: domain, split, present, image_count, class_count, classes, min_per_class, per_class_counts
    (JSON), height_min/max, width_min/max, channels ("1" or "1,3"), pixel_min/max/mean, unreadable_count,
    duplicate_count, label_min/max. Counts are of readable images; a missing split folder gives present=False
    and zeros. A duplicate is a file whose bytes equal an earlier file's anywhere in the dataset.
    File rows: domain, split, class_name, label (-1 for a class the first domain's train split lacks), path
    (relative to root), sha256, readable, height, width, channels, pixel_min/max/mean (None when unreadable).
    A file is unreadable when its suffix is not an image suffix or PIL cannot decode it to a non-empty image.

    Raises:
        DataLayoutError: `root` is not a folder or holds no domain folder.
    """
    domains = list_domains(root)
    classes = tuple(_class_dirs(root / domains[0] / "train") or ())
    labels = {name: i for i, name in enumerate(classes)}
    split_classes = {(d, s): _class_dirs(root / d / s) for d in domains for s in SPLITS}
    files = [f for (d, s), names in split_classes.items() for name in names or []
             for f in _read_class(root, f"{d}/{s}/{name}", labels.get(name, -1))]
    by_split: dict[tuple[str, str], list[_File]] = {key: [] for key in split_classes}
    for f in files:
        by_split[f.domain, f.split].append(f)
    duplicates = _duplicate_counts(files)
    splits = [_split_row(d, s, names, by_split[d, s], duplicates[d, s]) for (d, s), names in split_classes.items()]
    return SummaryTables(root=root, classes=classes, splits=splits, files=[f.row() for f in files])


def class_sort_key(name: str) -> tuple[int, int, str]:
    """Numeric class names sort by value, the others after them by name, as `layout.class_names` sorts."""
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _class_dirs(folder: Path) -> list[str] | None:
    """Class folder names, sorted; None when `folder` is missing. Every sub-folder counts, as in layout.py."""
    if not folder.is_dir():
        return None
    return sorted((e.name for e in os.scandir(folder) if e.is_dir()), key=class_sort_key)


def _read_class(root: Path, rel: str, label: int) -> list[_File]:
    domain, split, class_name = rel.split("/")
    folder = os.path.join(root, rel)  # str paths: pathlib costs ~0.3 s on 8k files
    # Hidden files (.DS_Store, editor swap files) are not dataset content; any other file is, readable or not.
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    files = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as fh:
            data = fh.read()
        stats = _decode(data) if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES else None
        files.append(_File(domain, split, class_name, label, f"{rel}/{name}", hashlib.sha256(data).hexdigest(), stats))
    return files


def _decode(data: bytes) -> ImageStats | None:
    """Decode as layout.py does (grey modes to L, others to RGB); None if PIL cannot, or the image is empty."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode if img.mode in ("L", "RGB") else "L" if img.mode in GREY_MODES else "RGB"
            pixels = np.asarray(img if mode == img.mode else img.convert(mode))  # (H, W) or (H, W, 3) uint8
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # not an image, truncated, a corrupt chunk or an absurd size
    if not pixels.size:
        return None
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return ImageStats(height=height, width=width, channels=channels, pixel_min=int(pixels.min()),
                      pixel_max=int(pixels.max()), pixel_mean=float(pixels.mean()))


def _duplicate_counts(files: list[_File]) -> Counter[tuple[str, str]]:
    """Per (domain, split): the files whose sha256 an earlier file already had."""
    seen: set[str] = set()
    counts: Counter[tuple[str, str]] = Counter()
    for f in files:
        if f.sha256 in seen:
            counts[f.domain, f.split] += 1
        seen.add(f.sha256)
    return counts


def _split_row(domain: str, split: str, classes: list[str] | None, files: list[_File], duplicates: int) -> Row:
    images = [f.stats for f in files if f.stats]
    per_class = dict.fromkeys(classes or [], 0)
    per_class.update(Counter(f.class_name for f in files if f.stats))
    labels = [f.label for f in files]
    return {"domain": domain, "split": split, "present": classes is not None, "image_count": len(images),
            "class_count": len(per_class), "classes": ",".join(per_class),
            "min_per_class": min(per_class.values(), default=0), "per_class_counts": json.dumps(per_class),
            **_image_ranges(images), "unreadable_count": len(files) - len(images), "duplicate_count": duplicates,
            "label_min": min(labels, default=None), "label_max": max(labels, default=None)}


def _image_ranges(images: list[ImageStats]) -> Row:
    """Shape, channel and pixel ranges over the readable images of a split; None where there are none."""
    if not images:
        return {"height_min": None, "height_max": None, "width_min": None, "width_max": None, "channels": "",
                "pixel_min": None, "pixel_max": None, "pixel_mean": None}
    sizes = [s.height * s.width * s.channels for s in images]
    return {"height_min": min(s.height for s in images), "height_max": max(s.height for s in images),
            "width_min": min(s.width for s in images), "width_max": max(s.width for s in images),
            "channels": ",".join(str(c) for c in sorted({s.channels for s in images})),
            "pixel_min": min(s.pixel_min for s in images), "pixel_max": max(s.pixel_max for s in images),
            "pixel_mean": sum(s.pixel_mean * n for s, n in zip(images, sizes, strict=True)) / sum(sizes)}
