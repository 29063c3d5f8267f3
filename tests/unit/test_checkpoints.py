from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from grasp_core.checkpoints import CheckpointHeader, load_checkpoint, read_header, save_checkpoint
from grasp_core.errors import CheckpointMismatchError, UnknownArchitectureError
from grasp_core.models import ARCHITECTURES, build_model
from tests.conftest import writes_nothing

HEADER = CheckpointHeader("small_cnn", 3, ("a", "b", "c"), (1, 8, 8), {"domain": "2020"})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, (1, 8, 8))
    return model, save_checkpoint(model, tmp_path / "m.safetensors", HEADER)


def test_round_trip_restores_every_tensor_and_the_header(saved):
    model, ckpt = saved
    loaded, header = load_checkpoint(ckpt.path)
    assert header == HEADER
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert len(ckpt.sha256) == 64
    assert not list(ckpt.path.parent.glob("*.tmp")), "atomic save leaves no temporary file"


@pytest.mark.faults
@pytest.mark.parametrize("field, value, fragment", [
    ("arch", "resnet50", "arch 'small_cnn' does not match target 'resnet50'"),
    ("num_classes", 4, "num_classes 3 does not match target 4"),
    ("input_shape", (3, 8, 8), "input_shape (1, 8, 8) does not match target (3, 8, 8)"),
])
def test_mismatch_against_target_is_refused(saved, field, value, fragment):
    _, ckpt = saved
    like = CheckpointHeader(**{**HEADER.__dict__, field: value})
    with writes_nothing(ckpt.path.parent), pytest.raises(CheckpointMismatchError, match=str(ckpt.path)) as err:
        load_checkpoint(ckpt.path, like=like)
    assert fragment in str(err.value)


@pytest.mark.faults
def test_wrong_tensor_shape_names_the_tensor(tmp_path):
    model = build_model("small_cnn", 4, (1, 8, 8))  # head has 4 outputs, header claims 3
    path = save_checkpoint(model, tmp_path / "x.safetensors", HEADER).path
    refused = pytest.raises(CheckpointMismatchError, match="tensor 'head.(weight|bias)' has shape")
    with writes_nothing(tmp_path), refused:
        load_checkpoint(path)


@pytest.mark.faults
def test_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("evil.pt", "evil.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload()))
        with writes_nothing(tmp_path), pytest.raises(CheckpointMismatchError, match=name):
            load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.faults
def test_empty_corrupt_nan_and_headerless_files_are_refused(saved, tmp_path):
    _, ckpt = saved
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(ckpt.path.read_bytes()[:-100])
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    model = build_model("small_cnn", 3, (1, 8, 8))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    nan_path = save_checkpoint(model, tmp_path / "nan.safetensors", HEADER).path
    with writes_nothing(tmp_path):  # a refusal neither repairs, moves nor quarantines the file
        with pytest.raises(CheckpointMismatchError, match="empty file"):
            load_checkpoint(empty)
        with pytest.raises(CheckpointMismatchError, match="cut.safetensors"):
            load_checkpoint(truncated)
        with pytest.raises(CheckpointMismatchError, match="header lacks"):
            read_header(bare)
        with pytest.raises(CheckpointMismatchError, match="'head.weight' holds NaN or Inf"):
            load_checkpoint(nan_path)


@pytest.mark.faults
def test_edited_tensor_bytes_fail_the_header_hash(saved, tmp_path):
    _, ckpt = saved
    data = bytearray(ckpt.path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's payload
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(data))
    with writes_nothing(tmp_path), pytest.raises(CheckpointMismatchError, match="does not match its header hash"):
        load_checkpoint(edited)


def test_architecture_registry():
    assert set(ARCHITECTURES) == {"small_cnn", "resnet50", "efficientnet_b1", "mobilevit_xxs", "mobilevit_xs"}
    with pytest.raises(UnknownArchitectureError, match="'model.arch' = 'vgg' is unknown; choose one of"):
        build_model("vgg", 3, (1, 8, 8))
    out = build_model("small_cnn", 7, (3, 12, 12))(torch.zeros(2, 3, 12, 12))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b1"])
def test_torchvision_architectures_build_and_take_local_weights(arch, tmp_path):
    """Selectable by name, classes and input from the data, weights from a local file (never downloaded)."""
    from grasp_core.checkpoints import load_weights_file

    torch.manual_seed(0)
    model = build_model(arch, 5, (1, 32, 32))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    donor = build_model(arch, 7, (3, 32, 32))  # another head size: the head keeps its own initialisation
    path = tmp_path / "weights.pt"
    torch.save({k.removeprefix("net."): v for k, v in donor.state_dict().items()}, path)  # torchvision naming
    load_weights_file(model, path)
    first_conv = next(n for n, _ in model.named_parameters())
    assert torch.equal(model.state_dict()[first_conv], donor.state_dict()[first_conv])


def test_same_weights_and_header_give_the_same_file_bytes_in_any_process(tmp_path):
    """safetensors writes its metadata in hash-map order; grasp sorts the header so file hashes are reproducible."""
    import subprocess
    import sys

    code = ("import torch; from pathlib import Path; from grasp_core.checkpoints import CheckpointHeader, "
            "save_checkpoint; from grasp_core.models import build_model; torch.manual_seed(0); "
            "h = CheckpointHeader('small_cnn', 3, ('a', 'b', 'c'), (1, 8, 8), {'domain': '2020', 'role': 'x', "
            "'z': '1', 'base_sha256': 'f' * 64}); "
            "print(save_checkpoint(build_model('small_cnn', 3, (1, 8, 8)), Path(__import__('sys').argv[1]), h).sha256)")
    hashes = {subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], capture_output=True,
                             text=True, check=True).stdout.strip() for i in range(3)}
    assert len(hashes) == 1
    loaded, header = load_checkpoint(tmp_path / "0.safetensors")  # still a valid safetensors file
    assert header.extra == {"domain": "2020", "role": "x", "z": "1", "base_sha256": "f" * 64}
