"""The paper's architectures by name: built offline, merged through one GRASP step, input contract kept."""

from __future__ import annotations

import pytest
import torch

from grasp_core.checkpoints import CheckpointHeader, load_checkpoint, save_checkpoint
from grasp_core.config import config_from_dict
from grasp_core.data import DomainData
from grasp_core.errors import ConfigError
from grasp_core.grasp import grasp_step, target_loaders
from grasp_core.memory import MemoryTracker
from grasp_core.models import ARCHITECTURES, build_model
from grasp_core.models.adapter import InputSpec
from tests.conftest import tiny_split

PAPER_ARCHS = ["mobilevit_xxs", "mobilevit_xs", "efficientnet_b1", "resnet50"]
SHAPE = (1, 16, 16)  # grey data; the networks see 32 x 32 RGB (model.image_size)
CFG = config_from_dict({"model": {"image_size": 32}, "align": {"batch_size": 2},
                        "finetune": {"batch_size": 2, "epochs": 1}, "data": {"augment": False}})


def test_registry_holds_the_paper_architectures():
    assert set(ARCHITECTURES) >= {"small_cnn", *PAPER_ARCHS}


@pytest.mark.slow  # 2-10 s per network on 2 quiet cores (first-call kernel set-up), 35 s on a busy box
@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_one_grasp_step_aligns_every_tensor(arch):
    if arch.startswith("mobilevit"):
        pytest.importorskip("timm", reason="the timm extra: pip install -e '.[timm]'")
    two = tiny_split(2, num_classes=2, shape=SHAPE)
    data = DomainData(name="t", classes=("0", "1"), train=two, val=two, test=two)
    spec = InputSpec(image_size=32)
    torch.manual_seed(0)
    target, source = build_model(arch, 2, SHAPE, spec), build_model(arch, 2, SHAPE, spec)
    step = grasp_step(target, source, "s", 1, target_loaders(data, CFG), CFG, MemoryTracker.for_model(target, False))
    names = [n for n, _ in target.named_parameters()]
    assert list(step.scores) == names, "the alignment covers every parameter tensor, in order"
    assert all(-1.0 <= s <= 1.0 for s in step.scores.values())
    assert step.steps == 1 and target(two.x).shape == (2, 2)


def test_input_contract_travels_with_the_checkpoint(tmp_path):
    model = build_model("resnet50", 3, (1, 8, 8), InputSpec(image_size=40, mean=(0.5,), std=(0.25,)))
    header = CheckpointHeader("resnet50", 3, ("a", "b", "c"), (1, 8, 8))
    save_checkpoint(model, tmp_path / "m.safetensors", header)
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")  # rebuilt with the default spec, then loaded
    assert loaded._size == 40
    assert loaded.input_mean.flatten().tolist() == [0.5] * 3 and loaded.input_std.flatten().tolist() == [0.25] * 3
    seen = []
    loaded.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    loaded.eval()(torch.rand(2, 1, 8, 8))
    assert seen == [(2, 3, 40, 40)]


def test_small_cnn_refuses_an_input_spec():
    with pytest.raises(ConfigError, match="'model.image_size'"):
        build_model("small_cnn", 3, SHAPE, InputSpec(image_size=32))
