"""Plugins own their knowledge: a registered policy counts what it moved, a registered criterion is used by name."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from grasp_core.align import ALIGNMENTS, Score, register_alignment
from grasp_core.config import TransferConfig, config_from_dict
from grasp_core.data import Batch
from grasp_core.errors import ConfigError
from grasp_core.grasp import grasp_step, merge_source, target_loaders
from grasp_core.memory import MemoryTracker
from grasp_core.transfer import POLICIES, Moved
from tests.conftest import TinyMLP


def _halfway_bias(target: nn.Module, source: nn.Module, scores: Mapping[str, Score], cfg: TransferConfig) -> Moved:
    """A policy unknown to the driver: moves fc1.bias halfway, whatever the scores, and says so."""
    with torch.no_grad():
        target.fc1.bias.add_(0.5 * (source.fc1.bias - target.fc1.bias))
    return Moved(["fc1.bias"], 0.5 * target.fc1.bias.numel())


def _everything_aligned(target: nn.Module, source: nn.Module, batches: list[Batch], *, eval_mode: bool = False,
                        per_row: bool = False) -> tuple[dict[str, float], dict[str, Score]]:
    """A criterion unknown to the driver: every tensor scores 1."""
    scores = dict.fromkeys(dict(target.named_parameters()), 1.0)
    return scores, (dict(scores) if per_row else {})


def test_a_registered_policy_is_counted_as_it_reports_not_as_a_hard_copy(tiny_domain, monkeypatch):
    monkeypatch.setitem(POLICIES, "halfway_bias", _halfway_bias)
    monkeypatch.setitem(ALIGNMENTS, "everything_aligned", _everything_aligned)
    cfg = config_from_dict({"data": {"augment": False}, "finetune": {"epochs": 1},
                            "align": {"criterion": "everything_aligned"},
                            "transfer": {"policy": "halfway_bias", "threshold": 0.0, "bn_recalibrate": False}})
    torch.manual_seed(0)
    target, source = TinyMLP(), TinyMLP()
    total = sum(p.numel() for p in target.parameters())
    step = grasp_step(target, source, "s", 1, target_loaders(tiny_domain, cfg), cfg, MemoryTracker.for_model(target))
    # every tensor scores above the threshold: counted as a hard copy, all `total` parameters would have moved
    assert step.transferred == ("fc1.bias",)
    assert step.params_transferred == target.fc1.bias.numel() // 2 < total
    assert step.params_frac == pytest.approx(step.params_transferred / total)


def test_a_registered_criterion_scores_the_merge_by_its_name(tiny_domain, monkeypatch):
    monkeypatch.setitem(ALIGNMENTS, "everything_aligned", _everything_aligned)
    cfg = config_from_dict({"data": {"augment": False}, "align": {"criterion": "everything_aligned"},
                            "transfer": {"policy": "paper", "threshold": 0.3, "bn_recalibrate": False}})
    torch.manual_seed(1)
    target, source = TinyMLP(), TinyMLP()
    merge = merge_source(target, source, target_loaders(tiny_domain, cfg), cfg, MemoryTracker.for_model(target))
    assert set(merge.scores.values()) == {1.0}
    assert sorted(merge.transferred) == sorted(dict(target.named_parameters()))
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), source.parameters(), strict=True))


@pytest.mark.parametrize("key, value, known", [("align.criterion", "hessian", "direction, gradient"),
                                               ("transfer.policy", "copy_all", "none, paper, soft")])
def test_an_unknown_plugin_fails_before_training_and_lists_the_registered_names(tiny_domain, key, value, known):
    section, name = key.split(".")
    cfg = config_from_dict({section: {name: value}})  # the config does not know the registries' names
    with pytest.raises(ConfigError, match=f"^'{key}' = '{value}' is unknown; choose one of: {known}$"):
        target_loaders(tiny_domain, cfg)


def test_a_criterion_registered_twice_is_refused(monkeypatch):
    monkeypatch.setitem(ALIGNMENTS, "everything_aligned", _everything_aligned)
    with pytest.raises(ValueError, match="alignment criterion 'everything_aligned' registered twice"):
        register_alignment("everything_aligned")(_everything_aligned)
