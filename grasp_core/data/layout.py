"""Read the on-disk layout of the public Yearbook and CLEAR releases:
`<root>/<domain>/{train,val,test}/<class>/*.png`. Folders starting with '_' or '.' are not domains.

Domains are in time order, oldest first: the order `<root>/_domains.txt` lists (one name a line, written
by `grasp data import`), else a natural sort of the names (2019 < 2020, year_3-4 < year_10-11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from grasp_core.data.preprocess import decode_image, to_batch
from grasp_core.errors import DataLayoutError
from grasp_core.names import check_name

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EXPECTED = "expected <root>/<domain>/{train,val,test}/<class>/*.png"
DOMAIN_ORDER_FILE = "_domains.txt"


@dataclass(frozen=True)
class Split:
    """Images of one domain split, decoded once and held as tensors."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64 class indices
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        """The same split with its tensors on `device` (moved once; batches are slices of them)."""
        return Split(x=self.x.to(device), y=self.y.to(device), files=self.files)


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing digit runs by value: year_1-2 < year_3-4 < year_10-11."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def list_domains(root: Path) -> list[str]:
    """Domain folders under `root`, oldest first (see the module docstring for the order)."""
    if not root.is_dir():
        raise DataLayoutError(f"{root}: data folder not found; {EXPECTED}")
    found = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "._"), key=natural_key)
    if not found:
        raise DataLayoutError(f"{root}: no domain folders; {EXPECTED}")
    for name in found:  # a domain name becomes part of checkpoint, model and report paths
        check_name(name, f"{root / name}: domain folder")
    order_file = root / DOMAIN_ORDER_FILE
    if not order_file.is_file():
        return found
    listed = [check_name(line.strip(), f"{order_file}: domain")
              for line in order_file.read_text().splitlines() if line.strip()]
    if sorted(listed) != sorted(found):
        raise DataLayoutError(f"{order_file}: lists {listed} but the domain folders are {found}; "
                              "list every domain folder once, oldest first, or delete the file")
    return listed


def class_names(root: Path, domain: str, split: str = "train") -> list[str]:
    """Class folder names of one split, sorted; numeric names sort by value."""
    folder = root / domain / split
    if not folder.is_dir():
        raise DataLayoutError(f"{folder}: split folder missing; {EXPECTED}")
    names = [p.name for p in folder.iterdir() if p.is_dir()]
    if not names:
        raise DataLayoutError(f"{folder}: no class folders; {EXPECTED}")
    return sorted(names, key=lambda n: (0, int(n), n) if n.isdigit() else (1, 0, n))


def check_layout(root: Path) -> list[str]:
    """Every domain has every split with the same class set; returns the class names."""
    domains = list_domains(root)
    classes = class_names(root, domains[0])
    for domain in domains:
        for split in SPLITS:
            found = class_names(root, domain, split)
            if found != classes:
                missing = sorted(set(classes) - set(found)) or sorted(set(found) - set(classes))
                raise DataLayoutError(
                    f"{root / domain / split}: class folders {found} differ from {domains[0]}/train "
                    f"(differs in {missing}); every domain and split needs the same classes")
    return classes


def input_shape(root: Path, domain: str, classes: list[str]) -> tuple[int, int, int]:
    """(C, H, W) of a domain's images, from its first train image (read_split enforces one shape)."""
    for cls in classes:
        folder = root / domain / "train" / cls
        first = min((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), default=None) \
            if folder.is_dir() else None
        if first is not None:
            image = decode_image(first)
            return (1, *image.shape) if image.ndim == 2 else (image.shape[2], image.shape[0], image.shape[1])
    raise DataLayoutError(f"{root / domain / 'train'}: no images; {EXPECTED}")


def read_split(root: Path, domain: str, split: str, classes: list[str]) -> Split:
    """Decode every image of one split; all images must share one shape."""
    arrays, labels, files = [], [], []
    for label, cls in enumerate(classes):
        folder = root / domain / split / cls
        if not folder.is_dir():
            raise DataLayoutError(f"{folder}: class folder missing; {EXPECTED}")
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            arrays.append(decode_image(path))
            labels.append(label)
            files.append(str(path.relative_to(root)))
    if not arrays:
        raise DataLayoutError(f"{root / domain / split}: no images; {EXPECTED}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataLayoutError(f"{root / domain / split}: images of several shapes {sorted(shapes)}; "
                              "resize them to one shape (grasp data import does)")
    return Split(x=to_batch(arrays), y=torch.tensor(labels, dtype=torch.int64), files=tuple(files))
