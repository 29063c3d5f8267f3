"""Turn a user's image folders into the product layout (`grasp data import DIR`): plan, then write.

Accepted trees, recognised per domain folder (domains may mix them):
  * split: `<src>/<domain>/{train,val,test}/<class>/*` (Yearbook periods `1930s/`, CLEAR bins `year_1-2/`);
    a domain with train and test but no val gets its val carved from train, stratified and seeded;
  * plain: `<src>/<domain>/<class>/*`, split stratified and seeded with `data.val_frac` / `data.test_frac`.
Domains are ordered by `data_import.order` or `data_import.order_by`. Every image (png, jpg, jpeg, bmp,
gif, tif, tiff, webp) is decoded once, converted to one channel mode and one size (`data_import.channels`,
`data_import.image_size`) and written as PNG, because the layout reader stacks a split into one tensor.
Pixels are otherwise kept. Other files are skipped and listed; an undecodable image stops the import.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grasp_core.config import Config, ImportConfig
from grasp_core.data.layout import DOMAIN_ORDER_FILE, SPLITS, natural_key
from grasp_core.data.summary import GREY_MODES, class_sort_key
from grasp_core.errors import DataLayoutError
from grasp_core.names import check_name

IMPORT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MARKER = "_import.json"
LAYOUTS = "expected <dir>/<domain>/{train,val,test}/<class>/<images> or <dir>/<domain>/<class>/<images>"
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class SourceImage:
    """One input image as its header describes it (nothing decoded yet)."""

    path: Path
    size: tuple[int, int]  # (W, H) after the EXIF orientation is applied
    grey: bool


@dataclass
class ImportPlan:
    """What `write_import` will write: every image's split and class, the output size and mode."""

    source: Path
    domains: list[str]  # oldest first
    layouts: dict[str, str]  # domain -> "split" | "train-test" | "plain"
    classes: list[str]
    groups: dict[tuple[str, str, str], list[SourceImage]]  # (domain, split, class) -> images
    size: tuple[int, int] = (0, 0)  # (W, H) written
    grey: bool = False  # written mode: grey ("L") or RGB
    skipped: list[str] = field(default_factory=list)  # files that are not images, relative to source


def order_domains(names: list[str], cfg: ImportConfig) -> list[str]:
    """Oldest first: `cfg.order` when given (it must name every domain), else by `cfg.order_by`."""
    if cfg.order:
        if sorted(cfg.order) != sorted(names):
            lacks, extra = sorted(set(names) - set(cfg.order)), sorted(set(cfg.order) - set(names))
            raise DataLayoutError(f"'data_import.order' = {cfg.order} does not match the domain folders {names} "
                                  f"(unlisted: {lacks}, not found: {extra}); list every domain once, oldest first")
        return list(cfg.order)
    if cfg.order_by == "number":
        if missing := [n for n in names if not re.search(r"\d+", n)]:
            raise DataLayoutError(f"domain folder '{missing[0]}' has no number; 'data_import.order_by: number' "
                                  "needs one in every name (use order_by: name or an explicit data_import.order)")
        return sorted(names, key=lambda n: (int(re.search(r"\d+", n).group()), natural_key(n)))  # type: ignore[union-attr]
    return sorted(names, key=natural_key)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name[0] not in "._"), key=lambda p: p.name)


def _is_grey(img: Image.Image) -> bool:
    if img.mode == "P":  # a palette may hold colours: decide on the pixels (palette images are small)
        rgb = np.asarray(img.convert("RGB"))  # (H, W, 3)
        return bool((rgb == rgb[..., :1]).all())
    return img.mode in (*GREY_MODES, "LA", "I", "F")


def _probe(path: Path) -> SourceImage:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in _SWAPPED_ORIENTATIONS:
                width, height = height, width
            return SourceImage(path, (width, height), _is_grey(img))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataLayoutError(f"{path}: not a decodable image ({err}); remove or replace it") from None


def _class_images(folder: Path, source: Path, skipped: list[str]) -> dict[str, list[SourceImage]]:
    """Class name -> images, for a folder of class folders; non-image files are recorded in `skipped`."""
    out: dict[str, list[SourceImage]] = {}
    for cls in _subdirs(folder):
        files = sorted(p for p in cls.iterdir() if p.is_file() and not p.name.startswith("."))
        skipped.extend(str(p.relative_to(source)) for p in files if p.suffix.lower() not in IMPORT_SUFFIXES)
        out[cls.name] = [_probe(p) for p in files if p.suffix.lower() in IMPORT_SUFFIXES]
    return out


def _cut(images: list[SourceImage], fracs: tuple[float, ...], seed: int, key: str) -> list[list[SourceImage]]:
    """Seeded shuffle of one class's images cut into len(fracs) + 1 parts (the rest last), each >= 1."""
    if len(images) < len(fracs) + 1:
        raise DataLayoutError(f"{key}: {len(images)} image(s) cannot be split into {len(fracs) + 1} non-empty "
                              "parts; add images or give the domain its own train/val/test folders")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])  # per class: independent of the other classes
    order = [images[i] for i in rng.permutation(len(images))]
    counts = [max(1, round(f * len(images))) for f in fracs]
    bounds = np.cumsum(counts).tolist()
    if bounds[-1] >= len(images):
        raise DataLayoutError(f"{key}: {len(images)} images leave none for train after val and test; add images")
    return [order[a:b] for a, b in zip([0, *bounds], [*bounds, len(order)], strict=True)]


def _plan_domain(folder: Path, plan: ImportPlan, cfg: Config) -> None:
    domain, data = folder.name, cfg.data
    names = {p.name for p in _subdirs(folder)}
    if {"train", "test"} <= names:
        splits = {s: _class_images(folder / s, plan.source, plan.skipped) for s in SPLITS if s in names}
        plan.layouts[domain] = "split" if "val" in names else "train-test"
        if "val" not in splits:  # carve val from train with the share val_frac has of train + val
            frac = data.val_frac / (1 - data.test_frac)
            splits["val"] = {}
            for cls, images in splits["train"].items():
                splits["val"][cls], splits["train"][cls] = _cut(images, (frac,), cfg.seed, f"{domain}/train/{cls}")
    elif names:
        plan.layouts[domain] = "plain"
        splits = {s: {} for s in SPLITS}
        for cls, images in _class_images(folder, plan.source, plan.skipped).items():
            test, val, train = _cut(images, (data.test_frac, data.val_frac), cfg.seed, f"{domain}/{cls}")
            splits["train"][cls], splits["val"][cls], splits["test"][cls] = train, val, test
    else:
        raise DataLayoutError(f"{folder}: no class or split folders; {LAYOUTS}")
    for split, classes in splits.items():
        for cls, images in classes.items():
            plan.groups[domain, split, cls] = images


def _check_classes(plan: ImportPlan) -> None:
    found: dict[tuple[str, str], set[str]] = {}
    for domain, split, cls in plan.groups:
        found.setdefault((domain, split), set()).add(cls)
    plan.classes = sorted(set().union(*found.values()), key=class_sort_key)
    for (domain, split), classes in found.items():
        if lacks := sorted(set(plan.classes) - classes):
            raise DataLayoutError(f"{plan.source / domain}: {split} lacks class folder(s) {lacks} that other "
                                  "domains have; every domain and split needs the same classes")
    for key, images in plan.groups.items():
        if not images:
            raise DataLayoutError(f"{plan.source.joinpath(*key)}: no images; every class folder needs some")


def plan_import(source: Path, cfg: Config) -> ImportPlan:
    """Find the domains, classes and images under `source` and decide every image's split, size and mode.

    Reads image headers only. Raises DataLayoutError naming the folder or file at fault.
    """
    if not source.is_dir():
        raise DataLayoutError(f"{source}: not a folder; {LAYOUTS}")
    folders = {check_name(p.name, f"{p}: domain folder"): p for p in _subdirs(source)}
    if len(folders) < 2:
        raise DataLayoutError(f"{source}: {len(folders)} domain folder(s); GRASP needs at least two "
                              f"(sources and a target); {LAYOUTS}")
    plan = ImportPlan(source=source, domains=order_domains(list(folders), cfg.data_import), layouts={},
                      classes=[], groups={})
    plan.skipped.extend(p.name for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    for domain in plan.domains:
        _plan_domain(folders[domain], plan, cfg)
    _check_classes(plan)
    images = [img for group in plan.groups.values() for img in group]
    size = cfg.data_import.image_size
    plan.size = (size, size) if size else Counter(img.size for img in images).most_common(1)[0][0]
    grey = sum(img.grey for img in images)
    plan.grey = cfg.data_import.channels == "grey" or (cfg.data_import.channels == "auto" and 2 * grey > len(images))
    return plan


def _convert(image: SourceImage, plan: ImportPlan) -> Image.Image:
    with Image.open(image.path) as raw:
        img = ImageOps.exif_transpose(raw)
        img = img.convert("L" if plan.grey else "RGB")  # palette, 16-bit and RGBA inputs included
    if img.size != plan.size:
        img = img.resize(plan.size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def write_import(plan: ImportPlan, dest: Path) -> dict[str, object]:
    """Write the planned images as `dest/<domain>/<split>/<class>/<stem>.png` plus `_domains.txt` and the
    import record `_import.json`; `dest` must not exist. Returns the record."""
    dest.mkdir(parents=True)
    counts: dict[str, dict[str, int]] = {d: dict.fromkeys(SPLITS, 0) for d in plan.domains}
    odd_sizes: Counter[str] = Counter()
    converted = 0
    for (domain, split, cls), images in plan.groups.items():
        folder = dest / domain / split / cls
        folder.mkdir(parents=True)
        used: set[str] = set()
        for image in images:
            stem, n = image.path.stem, 1
            while stem in used:  # a.jpg next to a.png
                n, stem = n + 1, f"{image.path.stem}-{n + 1}"
            used.add(stem)
            _convert(image, plan).save(folder / f"{stem}.png")
            counts[domain][split] += 1
            converted += image.grey != plan.grey
            if image.size != plan.size:
                odd_sizes[f"{image.size[0]}x{image.size[1]}"] += 1
    (dest / DOMAIN_ORDER_FILE).write_text("".join(f"{d}\n" for d in plan.domains))
    record = {"source": str(plan.source.resolve()), "domains": plan.domains, "layouts": plan.layouts,
              "classes": plan.classes, "size_wh": list(plan.size), "mode": "L" if plan.grey else "RGB",
              "counts": counts, "resized": sum(odd_sizes.values()), "resized_from": dict(odd_sizes.most_common(20)),
              "channel_converted": converted, "skipped_count": len(plan.skipped), "skipped": plan.skipped[:50]}
    (dest / MARKER).write_text(json.dumps(record, indent=1))
    return record
