from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from grasp_core.config import BaseConfig, DataConfig
from grasp_core.data import Batches, check_layout, list_domains, load_domain, read_split
from grasp_core.data.drift import write_digits_drift
from grasp_core.errors import DataLayoutError

SMALL = DataConfig(domains=2, image_size=8)


@pytest.fixture(scope="module")
def drift_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift") / "data"
    write_digits_drift(root, SMALL, BaseConfig(), seed=0)
    return root


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_benchmark_layout_sizes_and_determinism(drift_root, tmp_path):
    assert list_domains(drift_root) == ["2020", "2021"]
    classes = check_layout(drift_root)
    assert classes == [str(i) for i in range(10)]
    domain = load_domain(drift_root, "2021", classes)
    assert len(domain.test) > 200, "one test image must be worth under 0.5 % accuracy"
    assert domain.input_shape == (1, 8, 8)
    train_files = {f.split("/", 1)[1] for f in domain.train.files}
    test_files = {f.split("/", 1)[1] for f in domain.test.files}
    assert not {p.rsplit("/", 1)[1] for p in train_files} & {p.rsplit("/", 1)[1] for p in test_files}
    again = tmp_path / "again"
    write_digits_drift(again, SMALL, BaseConfig(), seed=0)
    assert _digest(again) == _digest(drift_root)


def test_drift_grows_with_time(drift_root):
    classes = check_layout(drift_root)
    old, new = (read_split(drift_root, d, "test", classes) for d in ("2020", "2021"))
    assert not torch.equal(old.x, new.x), "a later domain must differ from an earlier one"


def test_target_fraction_is_stratified(drift_root):
    classes = check_layout(drift_root)
    full = load_domain(drift_root, "2021", classes)
    small = load_domain(drift_root, "2021", classes, train_frac=0.2, seed=0)
    assert abs(len(small.train) - 0.2 * len(full.train)) <= len(classes)
    assert set(small.train.y.tolist()) == set(range(10))
    assert len(small.test) == len(full.test)


def test_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DataLayoutError, match="data folder not found"):
        list_domains(tmp_path / "missing")
    (tmp_path / "d" / "2020" / "train" / "0").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="2020/val: split folder missing"):
        check_layout(tmp_path / "d")


def test_batches_are_seeded_and_drop_last(tiny_domain):
    a = Batches(tiny_domain.train, 40, shuffle=True, drop_last=True, augment=True, seed=3)
    b = Batches(tiny_domain.train, 40, shuffle=True, drop_last=True, augment=True, seed=3)
    assert len(a) == 2
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=False))


def test_core_never_imports_orchestration_tools():
    code = ("import pkgutil, importlib, sys, grasp_core\n"
            "for m in pkgutil.walk_packages(grasp_core.__path__, 'grasp_core.'): importlib.import_module(m.name)\n"
            "bad = [n for n in ('prefect', 'mlflow', 'dvc', 'great_expectations') if n in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_input_shape_reads_one_image_and_matches_the_decoded_domain(drift_root, tmp_path):
    from PIL import Image

    from grasp_core.data import input_shape

    classes = check_layout(drift_root)
    assert input_shape(drift_root, "2020", classes) == load_domain(drift_root, "2020", classes).input_shape
    rgb = tmp_path / "rgb" / "d" / "train" / "a"
    rgb.mkdir(parents=True)
    Image.new("RGB", (5, 3)).save(rgb / "x.png")
    assert input_shape(tmp_path / "rgb", "d", ["a"]) == (3, 3, 5)
    with pytest.raises(DataLayoutError, match="no images"):
        input_shape(tmp_path / "rgb", "missing", ["a"])
