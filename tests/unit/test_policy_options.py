"""Issue 8's transfer-policy options, each on tiny real models: what it changes and what it must keep."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from grasp_core.align import gradient_alignment
from grasp_core.config import Config, TransferConfig, config_from_dict
from grasp_core.errors import ConfigError
from grasp_core.grasp import merge_source, run_grasp, target_loaders
from grasp_core.memory import MemoryTracker
from grasp_core.models import build_model
from grasp_core.order import alignment_prepass, nearest_first, order_sources
from grasp_core.transfer import get_policy, recalibrate_batchnorm, soft_weight
from tests.conftest import TinyMLP, tiny_split

SHAPE = (1, 4, 4)


PAPER = {"policy": "paper", "threshold": 0.3, "order": "given", "bn_recalibrate": False, "rollback": False,
         "keep_global_best": False}


def _cfg(**transfer) -> Config:
    """Tiny, fast settings on the paper's rule (gradient alignment) plus `transfer` options."""
    cfg = Config()
    transfer = {**PAPER, **transfer}
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=2, epochs=1, lr=0.03),
                               data=dataclasses.replace(cfg.data, augment=False),
                               align=dataclasses.replace(cfg.align, criterion="gradient"),
                               transfer=dataclasses.replace(cfg.transfer, **transfer))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", 3, SHAPE)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_per_row_alignment_is_the_cosine_of_each_gradient_row():
    torch.manual_seed(0)
    target, source = TinyMLP(), TinyMLP()
    split = tiny_split(12, seed=5)
    batches = [(split.x, split.y)]
    grads = []
    for model in (target, source):
        model.zero_grad()
        nn.functional.cross_entropy(model(split.x), split.y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    scores, rows = gradient_alignment(target, source, batches, per_row=True)
    g_t, g_s = grads[0]["fc1.weight"], grads[1]["fc1.weight"]
    expected = (g_t * g_s).sum(1) / (g_t.norm(dim=1) * g_s.norm(dim=1) + 1e-8)  # dead ReLU rows: 0
    assert rows["fc1.weight"].shape == (8,)
    assert torch.allclose(rows["fc1.weight"], expected, atol=1e-5)
    assert rows["fc1.bias"] == scores["fc1.bias"]  # 1-D tensors keep their whole-tensor cosine
    assert gradient_alignment(target, source, batches)[1] == {}


def test_channel_granularity_copies_only_the_aligned_rows():
    torch.manual_seed(1)
    target, source = TinyMLP(), TinyMLP()
    before, src = _state(target), _state(source)
    row_scores = torch.tensor([0.9, 0.1, 0.31, 0.25, -0.5, 0.8, 0.0, 0.29])
    scores = {"fc1.weight": row_scores, "fc1.bias": 0.2, "fc2.weight": torch.full((3,), 0.1), "fc2.bias": 0.5}
    moved = get_policy("paper")(target, source, scores, TransferConfig(threshold=0.3))
    assert sorted(moved.names) == ["fc1.weight", "fc2.bias"]
    assert moved.elements == 3 * target.fc1.weight.shape[1] + target.fc2.bias.numel()  # rows 0, 2 and 5 of fc1
    after = target.state_dict()
    for i, s in enumerate(row_scores.tolist()):
        assert torch.equal(after["fc1.weight"][i], (src if s > 0.3 else before)["fc1.weight"][i]), i
    assert torch.equal(after["fc1.bias"], before["fc1.bias"]) and torch.equal(after["fc2.weight"], before["fc2.weight"])
    assert torch.equal(after["fc2.bias"], src["fc2.bias"])


@pytest.mark.parametrize("score, weight", [(0.65, 0.5), (0.3, 0.0), (-0.2, 0.0), (1.0, 1.0), (0.475, 0.25)])
def test_soft_transfer_interpolates_by_the_documented_weight(score, weight):
    torch.manual_seed(2)
    target, source = TinyMLP(), TinyMLP()
    before, src = _state(target), _state(source)
    assert float(soft_weight(score, 0.3)) == pytest.approx(weight)
    moved = get_policy("soft")(target, source, {"fc1.weight": score}, TransferConfig(policy="soft", threshold=0.3))
    assert moved.names == (["fc1.weight"] if weight > 0 else [])
    assert moved.elements == pytest.approx(weight * target.fc1.weight.numel())
    expected = before["fc1.weight"] + weight * (src["fc1.weight"] - before["fc1.weight"])
    assert torch.allclose(target.state_dict()["fc1.weight"], expected, atol=1e-6)
    assert torch.equal(target.state_dict()["fc2.weight"], before["fc2.weight"])


def test_soft_transfer_per_row_weights_rows_separately():
    torch.manual_seed(3)
    target, source = TinyMLP(), TinyMLP()
    before, src = _state(target), _state(source)
    rows = torch.tensor([1.0, 0.0, 0.65, 0.3, 0.3, 0.3, 0.3, 0.3])
    moved = get_policy("soft")(target, source, {"fc1.weight": rows}, TransferConfig(policy="soft", threshold=0.3))
    w = soft_weight(rows, 0.3).view(-1, 1)
    assert moved.elements == pytest.approx(float(w.mean()) * target.fc1.weight.numel())  # 1 + 0.5 of 8 rows
    expected = before["fc1.weight"] + w * (src["fc1.weight"] - before["fc1.weight"])
    assert torch.allclose(target.state_dict()["fc1.weight"], expected, atol=1e-6)


def test_bn_recalibration_uses_the_given_target_images_only(tiny_domain):
    model = _cnn(4)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = tiny_domain.train.x
    assert recalibrate_batchnorm(model, images) == 3
    bn = model.features[0][1]
    with torch.no_grad():
        h = model.features[0][0](images)  # (B, C, H, W) input of the first BatchNorm
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.transpose(0, 1).flatten(1).var(1, unbiased=True), atol=1e-5)
    assert bn.momentum == 0.1 and all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    other = copy.deepcopy(model)
    recalibrate_batchnorm(other, tiny_domain.val.x)
    assert not torch.allclose(other.features[0][1].running_mean, bn.running_mean)
    assert recalibrate_batchnorm(TinyMLP(), images) == 0


def test_merge_recalibrates_bn_on_the_target_train_split_after_a_transfer(tiny_domain):
    cfg = _cfg(threshold=-1.0, bn_recalibrate=True)
    target, source = _cnn(5), _cnn(6)
    merge = merge_source(target, source, target_loaders(tiny_domain, cfg), cfg, MemoryTracker.for_model(target))
    assert merge.transferred  # threshold -1 copies every tensor
    expected = _cnn(7)
    expected.load_state_dict(source.state_dict())
    recalibrate_batchnorm(expected, tiny_domain.train.x)
    assert all(torch.allclose(v, expected.state_dict()[k]) for k, v in target.state_dict().items())


def test_nearest_order_starts_from_the_closest_domain():
    assert nearest_first(["2020", "2021", "2023", "2024"], "2022") == ["2021", "2023", "2020", "2024"]
    assert nearest_first(["2020", "2021", "2022", "2023"], "2024") == ["2023", "2022", "2021", "2020"]
    assert nearest_first(["a", "b", "d"], "c") == ["b", "d", "a"]  # non-numeric names: rank among sorted names
    assert order_sources(["2020", "2021"], "2022", "given") == ["2020", "2021"]
    assert order_sources(["2020", "2021", "2022"], "", "nearest") == ["2022", "2021", "2020"]  # "": the newest


def test_aligned_order_ranks_task_vectors_by_cosine_with_the_target_descent():
    torch.manual_seed(8)
    base = TinyMLP()
    split = tiny_split(12, seed=5)
    batches = [(split.x, split.y)]
    probe = copy.deepcopy(base)
    nn.functional.cross_entropy(probe(split.x), split.y).backward()
    descent = {n: -p.grad for n, p in probe.named_parameters()}
    noise = {n: torch.randn_like(g) * 0.01 for n, g in descent.items()}
    mix = {"down": (1.0, 0.0), "half": (1.0, 1.0), "up": (-1.0, 0.0), "noise": (0.0, 1.0)}
    opened = []

    def open_source(name):
        opened.append(name)
        model = copy.deepcopy(base)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(mix[name][0] * descent[n] + mix[name][1] * noise[n])
        return model

    scores = alignment_prepass(list(mix), open_source, lambda: copy.deepcopy(base), batches)
    assert scores["down"] == pytest.approx(1.0, abs=1e-4) and scores["up"] == pytest.approx(-1.0, abs=1e-4)
    keys = {name: -cos for name, cos in scores.items()}  # the pre-pass hands sort keys, lowest first
    assert order_sources(list(mix), "t", "aligned", lambda: keys) == ["down", "half", "noise", "up"]
    assert opened == list(mix)  # one pass, one source at a time


def _garbage_stream(tiny_domain):
    """A good first source (trained by the initial stage) then a random model copied in whole (threshold -1)."""
    yield "s0", _cnn(10)
    yield "bad", _cnn(11)


def test_rollback_keeps_the_previous_weights_exactly_and_marks_the_stage(tiny_domain):
    cfg = dataclasses.replace(_cfg(threshold=-1.0, rollback=True), finetune=dataclasses.replace(
        _cfg().finetune, initial_epochs=3, epochs=0))
    stages, kept = [], {}
    for result in run_grasp(_garbage_stream(tiny_domain), target_loaders(tiny_domain, cfg), cfg):
        stages.append(result.detached())
        kept[result.stage] = _state(result.target)
    first, second = stages
    assert second.candidate_val_accuracy < first.val_accuracy, "setup: the random source must hurt"
    assert second.rejected and not first.rejected
    assert second.val_accuracy == first.val_accuracy and second.test_accuracy == first.test_accuracy
    assert second.transferred  # the merge happened; the guard undid it
    assert all(torch.equal(kept[0][k], kept[1][k]) for k in kept[0])  # buffers too: BN stats moved by alignment


def test_rollback_off_keeps_the_worse_stage(tiny_domain):
    cfg = dataclasses.replace(_cfg(threshold=-1.0), finetune=dataclasses.replace(_cfg().finetune, initial_epochs=3,
                                                                                 epochs=0))
    first, second = [r.detached() for r in run_grasp(_garbage_stream(tiny_domain), target_loaders(tiny_domain, cfg),
                                                     cfg)]
    assert not second.rejected and second.val_accuracy < first.val_accuracy


def test_global_best_ends_on_the_best_stage_weights(tiny_domain):
    cfg = dataclasses.replace(_cfg(threshold=-1.0, keep_global_best=True), finetune=dataclasses.replace(
        _cfg().finetune, initial_epochs=3, epochs=0))
    states, results, live = {}, [], None
    for result in run_grasp(_garbage_stream(tiny_domain), target_loaders(tiny_domain, cfg), cfg):
        states[result.stage], live = _state(result.target), result.target
        results.append(result.detached())
    assert results[1].val_accuracy < results[0].val_accuracy and not results[1].rejected
    final = live.state_dict()
    assert all(torch.equal(final[k], states[0][k]) for k in final)  # restored once the stream ended
    assert not all(torch.equal(states[1][k], states[0][k]) for k in final)


@pytest.mark.parametrize("raw, message", [
    ({"transfer": {"granularity": "row"}}, "'transfer.granularity' = 'row' must be one of: tensor, channel"),
    ({"transfer": {"order": "random"}}, "'transfer.order' = 'random' must be one of: given, nearest, aligned"),
    ({"transfer": {"rollback": 1}}, "'transfer.rollback' must be bool, got 1"),
    ({"align": {"eval_mode": "yes"}}, "'align.eval_mode' must be bool, got 'yes'"),
    ({"baselines": {"ties_keep_frac": 0.0}}, "'baselines.ties_keep_frac' = 0.0 is outside"),
])
def test_new_options_are_validated(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw)
