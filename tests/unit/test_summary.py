from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grasp_core.data import class_names
from grasp_core.data.summary import FILE_COLUMNS, SPLIT_COLUMNS, summarise
from grasp_core.errors import DataLayoutError

SPLITS = ("train", "val", "test")


def png_bytes(seed: int, shape: tuple[int, ...] = (4, 4)) -> bytes:
    """A PNG of seeded random pixels: distinct seeds give distinct bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def build_tree(root: Path, domains: tuple[str, ...] = ("2020", "2021"), classes: tuple[str, ...] = ("a", "b"),
               per_class: int = 2) -> Path:
    seed = 0
    for domain in domains:
        for split in SPLITS:
            for cls in classes:
                (root / domain / split / cls).mkdir(parents=True)
                for i in range(per_class):
                    seed += 1
                    (root / domain / split / cls / f"{i}.png").write_bytes(png_bytes(seed))
    return root


def rows_by_split(tables) -> dict[tuple[str, str], dict]:
    return {(r["domain"], r["split"]): r for r in tables.splits}


def test_counts_labels_and_stats_of_a_clean_tree(tmp_path):
    root = build_tree(tmp_path / "data")
    (root / "2021" / "val" / "b" / "2.png").write_bytes(png_bytes(99))  # class b of 2021/val: 3 images
    (root / "_base" / "train" / "a").mkdir(parents=True)  # not a domain
    (root / "_base" / "train" / "a" / "0.png").write_bytes(png_bytes(1))
    (root / "_generator.json").write_text("{}")
    (root / "2020" / "train" / "a" / ".DS_Store").write_bytes(b"junk")  # hidden: not dataset content
    tables = summarise(root)
    assert tables.classes == ("a", "b")
    assert [tuple(r) for r in tables.splits] == [SPLIT_COLUMNS] * 6
    assert [tuple(r) for r in tables.files] == [FILE_COLUMNS] * 25
    row = rows_by_split(tables)["2021", "val"]
    assert row["present"] and row["image_count"] == 5 and row["class_count"] == 2 and row["classes"] == "a,b"
    assert json.loads(row["per_class_counts"]) == {"a": 2, "b": 3} and row["min_per_class"] == 2
    shape = (row["height_min"], row["height_max"], row["width_min"], row["width_max"], row["channels"])
    assert shape == (4, 4, 4, 4, "1")
    assert (row["label_min"], row["label_max"], row["unreadable_count"], row["duplicate_count"]) == (0, 1, 0, 0)
    files = [f for f in tables.files if (f["domain"], f["split"]) == ("2021", "val")]
    pixels = np.asarray(Image.open(root / files[0]["path"]))
    assert files[0]["path"] == "2021/val/a/0.png" and files[0]["class_name"] == "a" and files[0]["label"] == 0
    assert (files[0]["pixel_min"], files[0]["pixel_max"]) == (pixels.min(), pixels.max())
    assert files[0]["pixel_mean"] == pytest.approx(pixels.mean())
    assert row["pixel_mean"] == pytest.approx(np.mean([np.asarray(Image.open(root / f["path"])) for f in files]))


def test_labels_follow_the_layout_class_order(tmp_path):
    root = build_tree(tmp_path / "data", domains=("2020",), classes=("10", "2", "x"), per_class=1)
    tables = summarise(root)
    assert list(tables.classes) == class_names(root, "2020") == ["2", "10", "x"]
    assert {f["class_name"]: f["label"] for f in tables.files} == {"2": 0, "10": 1, "x": 2}


def test_unknown_class_gets_label_minus_one(tmp_path):
    root = build_tree(tmp_path / "data")
    (root / "2021" / "test" / "c").mkdir()
    (root / "2021" / "test" / "c" / "0.png").write_bytes(png_bytes(500))
    row = rows_by_split(summarise(root))["2021", "test"]
    assert row["classes"] == "a,b,c" and (row["label_min"], row["label_max"]) == (-1, 1)


def test_duplicates_count_every_copy_after_the_first(tmp_path):
    root = build_tree(tmp_path / "data")
    original = root / "2020" / "train" / "a" / "0.png"
    shutil.copy(original, root / "2021" / "test" / "b" / "copy1.png")
    shutil.copy(original, root / "2021" / "test" / "a" / "copy2.png")
    rows = rows_by_split(summarise(root))
    assert rows["2020", "train"]["duplicate_count"] == 0
    assert rows["2021", "test"]["duplicate_count"] == 2


def test_unreadable_files_have_no_stats(tmp_path):
    root = build_tree(tmp_path / "data")
    folder = root / "2020" / "val" / "a"
    good = png_bytes(7, (8, 8))
    (folder / "x.png").write_bytes(b"not an image")
    (folder / "truncated.png").write_bytes(good[: good.index(b"IDAT") + 12])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_bytes(good)  # a decodable PNG, but not an image suffix: junk in the dataset
    tables = summarise(root)
    bad = {f["path"].rsplit("/", 1)[1]: f for f in tables.files if not f["readable"]}
    assert sorted(bad) == ["empty.png", "notes.txt", "truncated.png", "x.png"]
    assert all(f[k] is None for f in bad.values() for k in ("height", "width", "channels", "pixel_mean"))
    row = rows_by_split(tables)["2020", "val"]
    assert (row["image_count"], row["unreadable_count"], row["min_per_class"]) == (4, 4, 2)


def test_missing_split_gives_a_row_that_is_not_present(tmp_path):
    root = build_tree(tmp_path / "data")
    shutil.rmtree(root / "2021" / "val")
    row = rows_by_split(summarise(root))["2021", "val"]
    assert row["present"] is False
    assert (row["image_count"], row["class_count"], row["min_per_class"], row["classes"]) == (0, 0, 0, "")
    assert row["height_min"] is None and row["label_min"] is None


def test_empty_class_folder_counts_zero(tmp_path):
    root = build_tree(tmp_path / "data")
    for path in (root / "2020" / "test" / "b").iterdir():
        path.unlink()
    row = rows_by_split(summarise(root))["2020", "test"]
    assert row["classes"] == "a,b" and row["min_per_class"] == 0 and json.loads(row["per_class_counts"])["b"] == 0


def test_grey_and_rgb_mixed(tmp_path):
    root = build_tree(tmp_path / "data")
    (root / "2021" / "train" / "a" / "rgb.png").write_bytes(png_bytes(321, (4, 4, 3)))
    tables = summarise(root)
    assert rows_by_split(tables)["2021", "train"]["channels"] == "1,3"
    assert next(f for f in tables.files if f["path"].endswith("rgb.png"))["channels"] == 3


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir(), lambda p: (p / "_base").mkdir(parents=True)])
def test_no_data_folder_or_no_domain_raises(tmp_path, make):
    make(tmp_path / "data")
    with pytest.raises(DataLayoutError, match="data"):
        summarise(tmp_path / "data")
