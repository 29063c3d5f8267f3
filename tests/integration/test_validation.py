"""The GX data gate on tiny datasets: one good, and one per kind of breakage, each named in the error."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.stores.validation import RESULT_FILE, DataValidationError, validate_dataset
from grasp_core.errors import GraspError
from tests.conftest import writes_nothing

pytestmark = pytest.mark.integration

DOMAINS, SPLITS, CLASSES, PER_CLASS = ("2020", "2021"), ("train", "val", "test"), ("a", "b"), 3


def png_bytes(seed: int, shape: tuple[int, ...] = (8, 8)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def png_0x0() -> bytes:
    """A PNG whose header claims 0x0 pixels (PIL refuses to write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def good_root(tmp_path_factory) -> Path:
    """2 domains x 3 splits x 2 classes x 3 distinct 8x8 grey PNGs, plus the generator's non-domain litter."""
    root = tmp_path_factory.mktemp("good") / "data"
    for i, (domain, split, cls, n) in enumerate(
            (d, s, c, n) for d in DOMAINS for s in SPLITS for c in CLASSES for n in range(PER_CLASS)):
        (root / domain / split / cls).mkdir(parents=True, exist_ok=True)
        (root / domain / split / cls / f"{n}.png").write_bytes(png_bytes(i))
    (root / "_base" / "train" / "a").mkdir(parents=True)
    (root / "_base" / "train" / "a" / "0.png").write_bytes(png_bytes(0))  # a copy, but _base is no domain
    (root / "_generator.json").write_text("{}")
    return root


def test_good_dataset_passes_and_writes_the_gx_result(good_root, tmp_path):
    report = validate_dataset(good_root, tmp_path / "out")
    assert report.success and report.failed == 0 and report.evaluated >= 12
    assert report.result_path == tmp_path / "out" / RESULT_FILE
    stored = json.loads(report.result_path.read_text())
    assert stored["success"] is True
    assert stored["statistics"]["evaluated_expectations"] == report.evaluated
    kinds = {r["expectation_config"]["type"] for v in stored["validations"].values() for r in v["results"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_be_in_set"} <= kinds
    assert "2 domains x 3 splits, 2 classes, 36 images of 8x8x1" in report.summary_lines[1]
    assert [p.name for p in report.result_path.parent.iterdir()] == [RESULT_FILE]  # no temp file left


def test_min_per_class_is_a_parameter(good_root, tmp_path):
    with pytest.raises(DataValidationError) as info:
        validate_dataset(good_root, tmp_path, min_per_class=4)
    assert "splits.min_per_class expect_column_values_to_be_between(>= 4): 6 of 6 splits fail: " \
           "2020/train/a = 3, 2020/train/b = 3, 2020/val/a = 3" in str(info.value)


def test_a_dataset_wrong_throughout_passes_by_majority_but_fails_the_configured_expectations(good_root, tmp_path):
    from flows.stores.validation import Expected

    assert validate_dataset(good_root, tmp_path / "majority").success  # all 8x8 grey: its own majority agrees
    expected = Expected(min_per_class=1, image_size=16, channels="rgb", classes=("a", "b", "c"))
    with pytest.raises(DataValidationError) as info:
        validate_dataset(good_root, tmp_path / "configured", expected=expected)
    failed = str(info.value)
    for line in ("files.height expect_column_values_to_be_in_set(in [16]): 36 of 36 files fail",
                 "files.width expect_column_values_to_be_in_set(in [16]): 36 of 36 files fail",
                 "files.channels expect_column_values_to_be_in_set(in [3]): 36 of 36 files fail",
                 "splits.classes expect_column_values_to_be_in_set(in ['a,b,c']): 6 of 6 splits fail"):
        assert line in failed, failed
    assert "every image needs validation.image_size height (16); resize it" in failed


def test_the_validation_section_of_params_yaml_reaches_the_gate(tmp_params):
    from flows.stores.validation import Expected
    from grasp_core.config import load_config

    cfg = load_config(tmp_params({"validation.image_size": 16, "validation.classes": ["x", "y"]}))
    assert Expected.from_config(cfg.validation) == Expected(1, 16, "auto", ("x", "y"))
    assert Expected.from_config(load_config(tmp_params()).validation) == Expected()  # unset: today's gate


def _rgb(root: Path) -> None:
    (root / "2021/val/a/0.png").write_bytes(png_bytes(1000, (8, 8, 3)))


def _extra_class(root: Path) -> None:
    (root / "2021/train/c").mkdir()
    (root / "2021/train/c/0.png").write_bytes(png_bytes(1001))


BREAKAGES: dict[str, tuple[Callable[[Path], object], int, list[str]]] = {
    # name: (break the copy of the good tree, failed expectations, substrings the message must hold)
    "missing split": (lambda r: shutil.rmtree(r / "2021/val"), 1, ["splits.present", "2021/val = False"]),
    "empty class folder": (lambda r: [p.unlink() for p in (r / "2020/test/b").iterdir()], 1,
                           ["splits.min_per_class", "2020/test/b = 0"]),
    "class missing in one domain": (lambda r: [shutil.rmtree(r / "2021" / s / "b") for s in SPLITS], 1,
                                    ["splits.classes", "2021/train lacks ['b']", "2021/test lacks ['b']"]),
    "unknown class": (_extra_class, 2, ["2021/train has ['c']", "files.label", "2021/train/c/0.png = -1"]),
    "non-image file": (lambda r: (r / "2020/train/a/x.png").write_bytes(b"not an image"), 1,
                       ["files.readable", "2020/train/a/x.png = False"]),
    "junk suffix": (lambda r: (r / "2021/test/a/notes.txt").write_text("hello"), 1, ["2021/test/a/notes.txt"]),
    "truncated png": (lambda r: (r / "2020/val/b/1.png").write_bytes(png_bytes(2000)[:50]), 1,
                      ["files.readable", "2020/val/b/1.png = False"]),
    "0x0 png": (lambda r: (r / "2021/train/b/zero.png").write_bytes(png_0x0()), 1, ["2021/train/b/zero.png"]),
    "empty png": (lambda r: (r / "2021/train/b/empty.png").write_bytes(b""), 1, ["2021/train/b/empty.png"]),
    "grey and rgb mixed": (_rgb, 1, ["files.channels", "in [1]", "2021/val/a/0.png = 3"]),
    "odd size": (lambda r: (r / "2020/test/a/1.png").write_bytes(png_bytes(3000, (9, 8))), 1,
                 ["files.height", "2020/test/a/1.png = 9"]),
    "duplicated file": (lambda r: shutil.copy(r / "2020/train/a/0.png", r / "2021/test/b/copy.png"), 1,
                        ["files.sha256", "2020/train/a/0.png = '", "2021/test/b/copy.png = '"]),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
@pytest.mark.faults
def test_each_breakage_fails_naming_where(good_root, tmp_path, name):
    root = shutil.copytree(good_root, tmp_path / "data")
    breakage, failed, needles = BREAKAGES[name]
    breakage(root)
    with writes_nothing(root), pytest.raises(DataValidationError) as info:  # the data is read, never "fixed"
        validate_dataset(root, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [RESULT_FILE]  # the report only, no temporary
    message = str(info.value)
    assert message.startswith(f"data validation failed: {failed} of "), message
    assert len(message.splitlines()) == failed + 2, message
    assert all(needle in message for needle in needles), message
    assert message.endswith(str(tmp_path / "out" / RESULT_FILE))
    stored = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert stored["success"] is False and stored["statistics"]["unsuccessful_expectations"] == failed


@pytest.mark.faults
def test_missing_root_or_no_domain_is_a_user_error(tmp_path):
    (tmp_path / "data" / "_base").mkdir(parents=True)
    with writes_nothing(tmp_path):
        with pytest.raises(GraspError, match=f"{tmp_path / 'nope'}: data folder not found"):
            validate_dataset(tmp_path / "nope", tmp_path / "out")
        with pytest.raises(DataValidationError, match=f"{tmp_path / 'data'}: no domain folders"):
            validate_dataset(tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "nope").exists()


@pytest.mark.faults
def test_unchanged_data_is_not_revalidated_but_any_edit_is(good_root, tmp_path):
    """A pass is re-used only for the same files (path, size, mtime, inode) and the same suite; an edit re-runs GX."""
    root = tmp_path / "data"
    shutil.copytree(good_root, root)
    out = tmp_path / "out"
    first = validate_dataset(root, out)
    assert not any("not re-run" in line for line in first.summary_lines)
    again = validate_dataset(root, out)
    assert again.success and again.evaluated == first.evaluated
    assert again.summary_lines[-1] == "(unchanged since that validation: GX not re-run)"
    other_knob = validate_dataset(root, out, min_per_class=2)  # another suite setting: GX runs again
    assert not any("not re-run" in line for line in other_knob.summary_lines)
    (root / "2021" / "test" / "b" / "0.png").write_bytes(b"not an image")  # same folder, broken file
    with pytest.raises(DataValidationError, match="2021"):
        validate_dataset(root, out)
    with pytest.raises(DataValidationError):  # a failed result is never re-used as a pass
        validate_dataset(root, out)


def test_prewarmed_worker_gives_the_same_pass_and_the_same_failure(good_root, tmp_path):
    """GX in its own process (the flow's path): the report and the error come back as in process."""
    from flows.stores.validation import GxWorker

    worker = GxWorker()
    try:
        here = validate_dataset(good_root, tmp_path / "here")
        there = validate_dataset(good_root, tmp_path / "there", worker=worker)
        assert (there.success, there.evaluated, there.summary_lines) == (here.success, here.evaluated,
                                                                        here.summary_lines)
        assert there.result_path == tmp_path / "there" / RESULT_FILE and there.result_path.is_file()
        root = shutil.copytree(good_root, tmp_path / "data")
        BREAKAGES["duplicated file"][0](root)
        with pytest.raises(DataValidationError) as info:
            validate_dataset(root, tmp_path / "broken", worker=worker)
        assert "2021/test/b/copy.png" in str(info.value)
    finally:
        worker.close()
