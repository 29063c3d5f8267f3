"""`align.criterion: direction`: score = cos(theta_source - theta_target, -grad of the target loss)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from grasp_core.align import ALIGNMENTS, direction_alignment
from grasp_core.config import Config, TransferConfig
from grasp_core.grasp import merge_source, target_loaders
from grasp_core.memory import MemoryTracker
from grasp_core.transfer import get_policy, soft_weight
from tests.conftest import TinyMLP, tiny_split


def _target_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def test_direction_score_is_the_hand_computed_cosine_and_the_source_needs_no_gradient():
    torch.manual_seed(0)
    target, source = TinyMLP(), TinyMLP()
    split = tiny_split(12, seed=5)
    grads = _target_gradients(target, split.x, split.y)
    scores, rows = direction_alignment(target, source, [(split.x, split.y)], per_row=True)
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        d, g = (src[name] - p).detach().flatten(), -grads[name].flatten()
        assert scores[name] == pytest.approx(float(d @ g / (d.norm() * g.norm())), abs=1e-5), name
    d, g = (src["fc1.weight"] - target.fc1.weight).detach(), -grads["fc1.weight"]
    expected = (d * g).sum(1) / (d.norm(dim=1) * g.norm(dim=1) + 1e-8)
    assert torch.allclose(rows["fc1.weight"], expected, atol=1e-5)
    assert all(p.grad is None for p in [*target.parameters(), *source.parameters()])  # nothing left alive
    assert ALIGNMENTS["direction"] is direction_alignment


def test_a_source_one_gradient_step_ahead_scores_one_and_soft_moves_all_the_way():
    torch.manual_seed(1)
    target, source = TinyMLP(), TinyMLP()
    split = tiny_split(12, seed=6)
    grads = _target_gradients(target, split.x, split.y)
    with torch.no_grad():
        for name, p in source.named_parameters():
            p.copy_(dict(target.named_parameters())[name] - 0.1 * grads[name])
    scores, _ = direction_alignment(target, source, [(split.x, split.y)])
    assert all(s == pytest.approx(1.0, abs=1e-4) for s in scores.values())
    mirrored, _ = direction_alignment(source, target, [(split.x, split.y)])  # the step backwards goes uphill
    assert all(s < 0 for s in mirrored.values())
    with torch.no_grad():
        loss_before = float(nn.functional.cross_entropy(target(split.x), split.y))
        moved = get_policy("soft")(target, source, scores, TransferConfig(policy="soft", threshold=0.0))
        assert sorted(moved.names) == sorted(scores)
        assert float(nn.functional.cross_entropy(target(split.x), split.y)) < loss_before


def test_identical_models_score_zero_and_transfer_nothing():
    torch.manual_seed(2)
    target = TinyMLP()
    twin = TinyMLP()
    twin.load_state_dict(target.state_dict())
    split = tiny_split(12, seed=7)
    scores, _ = direction_alignment(target, twin, [(split.x, split.y)])
    assert set(scores.values()) == {0.0}
    assert get_policy("soft")(target, twin, scores, TransferConfig(policy="soft", threshold=0.0)) == ([], 0.0)


@pytest.mark.parametrize("score, weight", [(0.4, 0.4), (0.05, 0.05), (0.0, 0.0), (-0.3, 0.0), (1.0, 1.0)])
def test_soft_weight_at_threshold_zero_is_the_positive_part_of_the_direction_cosine(score, weight):
    assert float(soft_weight(score, 0.0)) == pytest.approx(weight)


def test_merge_source_scores_by_the_configured_criterion(tiny_domain):
    cfg = Config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=False),
                              align=dataclasses.replace(cfg.align, criterion="direction"),
                              transfer=dataclasses.replace(cfg.transfer, policy="soft", threshold=0.0,
                                                           bn_recalibrate=False))
    torch.manual_seed(3)
    target, source = TinyMLP(), TinyMLP()
    loaders = target_loaders(tiny_domain, cfg)
    expected, _ = direction_alignment(target, source, [next(iter(loaders.align))])
    loaders.align.reset()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    merge = merge_source(target, source, loaders, cfg, MemoryTracker.for_model(source))
    assert merge.scores == pytest.approx(expected)
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        w = max(expected[name], 0.0)
        assert torch.allclose(p, before[name] + w * (src[name] - before[name]), atol=1e-6), name

