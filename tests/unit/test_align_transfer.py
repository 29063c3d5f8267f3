"""Alignment equals a hand-computed cosine; the paper policy copies exactly what passes the threshold."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from grasp_core.align import gradient_alignment
from grasp_core.config import TransferConfig
from grasp_core.errors import ConfigError
from grasp_core.transfer import POLICIES, get_policy
from tests.conftest import TinyMLP, tiny_split


def _batch(n: int = 12):
    split = tiny_split(n, seed=5)
    return [(split.x, split.y)]


def _hand_grads(model: TinyMLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backprop written out by hand for sign * fc2(relu(fc1(x))) with mean cross-entropy."""
    x = x.flatten(1)
    pre = x @ model.fc1.weight.T + model.fc1.bias
    h = pre.clamp(min=0)
    logits = model.sign * (h @ model.fc2.weight.T + model.fc2.bias)
    delta = (logits.softmax(1) - F.one_hot(y, logits.shape[1]).float()) / len(y)  # dL/dlogits
    d_out = model.sign * delta
    d_pre = (d_out @ model.fc2.weight) * (pre > 0).float()
    return {"fc2.weight": d_out.T @ h, "fc2.bias": d_out.sum(0), "fc1.weight": d_pre.T @ x, "fc1.bias": d_pre.sum(0)}


def test_alignment_equals_hand_computed_cosine():
    torch.manual_seed(0)
    target, source = TinyMLP(), TinyMLP()
    batches = _batch()
    x, y = batches[0]
    with torch.no_grad():
        g_t, g_s = _hand_grads(target, x, y), _hand_grads(source, x, y)
    expected = {n: float(torch.dot(g_t[n].flatten(), g_s[n].flatten()) / (g_t[n].norm() * g_s[n].norm() + 1e-8))
                for n in g_t}
    scores = gradient_alignment(target, source, batches)[0]
    assert scores.keys() == expected.keys()
    for name in expected:
        assert scores[name] == pytest.approx(expected[name], abs=1e-5), name
    assert len({round(v, 3) for v in scores.values()}) > 1, "scores should differ between tensors"
    assert all(p.grad is None for p in [*target.parameters(), *source.parameters()]), "gradients must be freed"


def test_identical_models_align_to_one():
    torch.manual_seed(1)
    target = TinyMLP()
    scores = gradient_alignment(target, copy.deepcopy(target), _batch())[0]
    assert all(s == pytest.approx(1.0, abs=1e-5) for s in scores.values())


def test_anti_aligned_source_transfers_nothing():
    torch.manual_seed(2)
    target = TinyMLP(sign=1.0)
    source = TinyMLP(sign=-1.0)
    source.load_state_dict(target.state_dict())
    # zero last layer: both predict uniformly, so the sign flip exactly negates every gradient
    with torch.no_grad():
        for m in (target, source):
            m.fc2.weight.zero_()
            m.fc2.bias.zero_()
        source.fc2.weight.copy_(torch.full_like(source.fc2.weight, 0.0))
    scores = gradient_alignment(target, source, _batch())[0]
    assert scores["fc2.weight"] == pytest.approx(-1.0, abs=1e-5)
    assert all(s <= 0.0 for s in scores.values())
    before = copy.deepcopy(target.state_dict())
    moved = get_policy("paper")(target, source, scores, TransferConfig(threshold=0.3))
    assert moved.names == [] and moved.elements == 0.0
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.3, 0.55, 1.0])
def test_paper_policy_copies_exactly_the_tensors_above_threshold(threshold):
    torch.manual_seed(3)
    target, source = TinyMLP(), TinyMLP()
    scores = {"fc1.weight": 0.9, "fc1.bias": 0.3, "fc2.weight": -0.4, "fc2.bias": 0.55}
    before = copy.deepcopy(target.state_dict())
    moved = get_policy("paper")(target, source, scores, TransferConfig(threshold=threshold))
    copied = moved.names
    assert sorted(copied) == sorted(n for n, s in scores.items() if s > threshold)  # strict >
    assert moved.elements == sum(p.numel() for n, p in target.named_parameters() if n in copied)
    src = source.state_dict()
    for name, value in target.state_dict().items():
        assert torch.equal(value, src[name] if name in copied else before[name]), name


def test_copying_every_tensor_reproduces_the_source_logits():
    torch.manual_seed(4)
    target, source = TinyMLP(), TinyMLP()
    x = tiny_split(8).x
    moved = get_policy("paper")(target, source, dict.fromkeys(dict(target.named_parameters()), 1.0),
                                TransferConfig(threshold=0.0))
    assert len(moved.names) == 4 and moved.elements == sum(p.numel() for p in target.parameters())
    assert torch.equal(target(x), source(x))


def test_policy_registry_and_unknown_policy():
    assert set(POLICIES) == {"paper", "soft", "none"}
    with pytest.raises(ConfigError, match="'transfer.policy' = 'nope' is unknown; choose one of: none, paper, soft"):
        get_policy("nope")
