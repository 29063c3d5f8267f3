"""The pieces of deployment that need no registry: the shared image preprocessing, image collection, the
version/path split of `grasp predict`, softmax, parity figures, and the pinned requirements of the pyfunc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grasp_core.data import decode_image, load_images, read_split, to_batch
from grasp_core.errors import DataLayoutError, GraspError


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_read_split_and_load_images_give_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    files = [_png(tmp_path / "d" / "test" / cls / f"{i}.png", rng.integers(0, 256, (6, 5), dtype=np.uint8))
             for cls in ("a", "b") for i in range(2)]
    split = read_split(tmp_path, "d", "test", ["a", "b"])
    assert torch.equal(load_images(files, (1, 6, 5)), split.x)
    assert split.x.shape == (4, 1, 6, 5) and float(split.x.max()) <= 1.0


def test_load_images_converts_to_the_models_channels_and_size(tmp_path):
    rgb = _png(tmp_path / "rgb.png", np.full((10, 12, 3), (255, 0, 0), dtype=np.uint8))
    grey = _png(tmp_path / "grey.png", np.full((4, 4), 128, dtype=np.uint8))
    assert load_images([rgb], (1, 5, 6)).shape == (1, 1, 5, 6)
    batch = load_images([grey], (3, 4, 4))  # (1, 3, 4, 4): grey repeated into RGB by PIL
    assert torch.allclose(batch, torch.full((1, 3, 4, 4), 128 / 255))
    assert decode_image(rgb).shape == (10, 12, 3) and to_batch([decode_image(grey)]).shape == (1, 1, 4, 4)


def test_an_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataLayoutError, match=r"bad\.png: unreadable image"):
        load_images([bad], (1, 4, 4))


def test_collect_images_walks_folders_and_refuses_missing_paths(tmp_path):
    from flows.ops.predict import collect_images

    a = _png(tmp_path / "x" / "b" / "2.png", np.zeros((2, 2), dtype=np.uint8))
    b = _png(tmp_path / "x" / "a" / "1.jpg", np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "x" / "notes.txt").write_text("skip me")
    assert collect_images([tmp_path / "x", a]) == [b, a, a]
    with pytest.raises(GraspError, match="no such file or folder"):
        collect_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraspError, match="no images"):
        collect_images([tmp_path / "empty"])


def test_split_ref_reads_an_optional_version_before_the_paths(tmp_path, monkeypatch):
    from flows.ops.deploy_cli import split_ref

    monkeypatch.chdir(tmp_path)
    assert split_ref(["@challenger", "a.png"]) == ("@challenger", [Path("a.png")])
    assert split_ref(["v3", "a.png", "b"]) == ("v3", [Path("a.png"), Path("b")])
    assert split_ref(["a.png"]) == ("@champion", [Path("a.png")])
    (tmp_path / "7").mkdir()  # a folder named like a version is a path
    assert split_ref(["7", "a.png"]) == ("@champion", [Path("7"), Path("a.png")])
    with pytest.raises(GraspError, match="no images follow"):
        split_ref(["@champion"])


def test_softmax_rows_sum_to_one_and_keep_the_argmax():
    from flows.ops.predict import softmax

    logits = np.array([[1000.0, 0.0, -1.0], [0.0, 2.0, 1.0]], dtype=np.float32)
    probs = softmax(logits)
    assert np.allclose(probs.sum(1), 1.0) and probs.argmax(1).tolist() == [0, 1] and np.isfinite(probs).all()


def test_parity_reports_the_largest_difference_and_agreement():
    from flows.ops.export import parity

    ref = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    moved = ref.copy()
    moved[2] = [3.5, 3.0]  # flips the third prediction
    check = parity(ref, moved)
    assert check.max_abs_logit_diff == pytest.approx(3.5) and check.agreement_frac == pytest.approx(2 / 3)
    assert not check.ok and parity(ref, ref + 5e-5).ok


def test_requirements_pin_what_the_model_imports_and_drop_local_labels():
    from flows.stores.model_package import requirements

    pins = dict(p.split("==") for p in requirements("small_cnn"))
    assert {"mlflow", "torch", "torchvision", "safetensors", "numpy", "pyyaml", "pillow"} == set(pins)
    assert all(v and "+" not in v for v in pins.values())
    assert "timm" in dict(p.split("==") for p in requirements("mobilevit_xxs"))
