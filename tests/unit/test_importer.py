"""`grasp data import`, the pure part: layouts, ordering, stratified seeded splits, one size and mode."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from grasp_core.config import Config, ImportConfig, config_from_dict
from grasp_core.data import check_layout, list_domains, load_domain
from grasp_core.data.importer import MARKER, order_domains, plan_import, write_import
from grasp_core.data.layout import DOMAIN_ORDER_FILE
from grasp_core.errors import DataLayoutError
from tests.trees import plain_tree, split_tree, write_image

BINS = ["year_10-11", "year_1-2", "year_3-4"]


def _cfg(**data_import: object) -> Config:
    return config_from_dict({"data_import": data_import})


@pytest.mark.parametrize("cfg, expected", [
    (ImportConfig(), ["year_1-2", "year_3-4", "year_10-11"]),
    (ImportConfig(order_by="number"), ["year_1-2", "year_3-4", "year_10-11"]),
    (ImportConfig(order=["year_3-4", "year_1-2", "year_10-11"]), ["year_3-4", "year_1-2", "year_10-11"]),
])
def test_domains_are_ordered_by_the_configured_key(cfg, expected):
    assert order_domains(BINS, cfg) == expected
    assert order_domains(["1950s", "1930s", "2000s"], ImportConfig(order_by="number")) == ["1930s", "1950s", "2000s"]


def test_ordering_errors_name_the_key():
    with pytest.raises(DataLayoutError, match=r"'data_import.order'.*unlisted: \['year_10-11'\]"):
        order_domains(BINS, ImportConfig(order=["year_1-2", "year_3-4"]))
    with pytest.raises(DataLayoutError, match="'recent' has no number"):
        order_domains(["2001", "recent"], ImportConfig(order_by="number"))


def test_yearbook_periods_keep_their_split_and_read_back(tmp_path):
    src = split_tree(tmp_path / "yearbook", ["1950s", "1930s", "1940s"], classes=("F", "M"))
    record = write_import(plan_import(src, Config()), tmp_path / "data")
    root = tmp_path / "data"
    assert list_domains(root) == ["1930s", "1940s", "1950s"]
    assert check_layout(root) == ["F", "M"]
    assert record["layouts"] == dict.fromkeys(["1930s", "1940s", "1950s"], "split")
    assert record["counts"]["1930s"] == {"train": 4, "val": 4, "test": 4}
    assert (record["resized"], record["channel_converted"], record["mode"]) == (0, 0, "L")
    assert load_domain(root, "1950s", ["F", "M"]).input_shape == (1, 10, 12)
    # the pixels are kept: the written PNG decodes to the source image
    written, original = (Image.open(r / "1930s/val/M/1.png") for r in (root, src))
    assert list(written.getdata()) == list(original.getdata())


def test_clear_bins_in_natural_order_get_val_carved_from_train(tmp_path):
    src = split_tree(tmp_path / "clear", BINS, per_split=6, splits=("train", "test"))
    root = tmp_path / "data"
    record = write_import(plan_import(src, Config()), root)
    assert (root / DOMAIN_ORDER_FILE).read_text().split() == ["year_1-2", "year_3-4", "year_10-11"]
    assert list_domains(root)[-1] == "year_10-11", "the newest bin is the default target"
    assert record["layouts"]["year_1-2"] == "train-test"
    # val_frac / (1 - test_frac) = 0.15 / 0.75 = 20 % of 6 train images per class -> 1
    assert record["counts"]["year_3-4"] == {"train": 10, "val": 2, "test": 12}


def test_plain_tree_is_split_stratified_seeded_in_one_size_and_mode(tmp_path):
    src = plain_tree(tmp_path / "plain", ["2001", "2000"])
    (src / "2000" / "cat" / "notes.txt").write_text("not an image")
    root = tmp_path / "data"
    record = write_import(plan_import(src, Config()), root)
    # 10 per class: test round(2.5) = 2, val round(1.5) = 2, train 6; x 2 classes
    assert record["counts"]["2000"] == {"train": 12, "val": 4, "test": 4}
    # 6 of 10 images per class are RGB JPEGs (1 of them 17x9): the majority mode and size win
    assert (record["mode"], record["size_wh"]) == ("RGB", [12, 10])
    assert record["resized"] == 4 and record["resized_from"] == {"17x9": 4}
    assert record["channel_converted"] == 16
    assert record["skipped"] == ["2000/cat/notes.txt"]
    assert json.loads((root / MARKER).read_text())["counts"] == record["counts"]
    assert load_domain(root, "2001", check_layout(root)).input_shape == (3, 10, 12)
    write_import(plan_import(src, Config()), tmp_path / "again")
    assert sorted(p.relative_to(tmp_path / "again").as_posix() for p in (tmp_path / "again").rglob("*.png")) == \
        sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")), "same seed, same split"
    other = write_import(plan_import(src, config_from_dict({"seed": 1})), tmp_path / "other")
    assert other["counts"] == record["counts"]
    assert {p.name for p in (tmp_path / "other/2000/test/cat").iterdir()} != \
        {p.name for p in (root / "2000/test/cat").iterdir()}, "another seed, another split"


def test_configured_size_and_channels_convert_every_image(tmp_path):
    src = plain_tree(tmp_path / "plain", ["a1", "a2"], per_class=4)
    record = write_import(plan_import(src, _cfg(image_size=16, channels="grey")), tmp_path / "data")
    assert (record["mode"], record["size_wh"], record["resized"]) == ("L", [16, 16], 16)
    assert Image.open(next((tmp_path / "data/a1/train/cat").iterdir())).mode == "L"


def test_bad_trees_are_refused_naming_the_culprit(tmp_path):
    with pytest.raises(DataLayoutError, match="1 domain folder"):
        plan_import(split_tree(tmp_path / "one", ["2000"]), Config())
    src = split_tree(tmp_path / "lacks", ["2000", "2001"])
    for p in (src / "2001/val/b").iterdir():
        p.unlink()
    (src / "2001/val/b").rmdir()
    with pytest.raises(DataLayoutError, match=r"2001: val lacks class folder\(s\) \['b'\]"):
        plan_import(src, Config())
    src = split_tree(tmp_path / "junk", ["2000", "2001"])
    (src / "2001/test/a/0.png").write_bytes(b"not a png")
    with pytest.raises(DataLayoutError, match=r"2001/test/a/0.png: not a decodable image"):
        plan_import(src, Config())
    src = tmp_path / "tiny"
    for domain in ("2000", "2001"):
        for i in range(2):
            write_image(src / domain / "a" / f"{i}.png", i)
    with pytest.raises(DataLayoutError, match=r"2000/a: 2 image\(s\) cannot be split into 3"):
        plan_import(src, Config())
