"""The O(1) merge competitors on hand-made one-vector models: each equals the merge computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grasp_core.config import Config, config_from_dict
from grasp_core.memory import MemoryTracker
from grasp_core.methods import MethodContext
from grasp_core.methods.averaging import continual_weight_average
from grasp_core.methods.task_arithmetic import continual_task_arithmetic
from grasp_core.methods.ties import continual_ties, ties_merge, trim_top

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
TAUS = {"s1": torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0]), "s2": torch.tensor([-1.0, 1.0, 1.0, 1.0, -0.5])}


class Vec(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(value.clone())


def _ctx(cfg: Config | None = None) -> MethodContext:
    return MethodContext(cfg=cfg or Config(), loaders=None, source_names=tuple(TAUS),  # type: ignore[arg-type]
                         open_source=lambda name: Vec(BASE + TAUS[name]), open_base=lambda: Vec(BASE),
                         model_param_bytes=20, param_shapes=frozenset({(5,)}))


def _merged(fn, cfg: Config | None = None) -> torch.Tensor:
    return fn(_ctx(cfg), MemoryTracker(20, enabled=False)).w.detach()


def test_continual_weight_average_is_the_mean_of_the_sources():
    assert torch.allclose(_merged(continual_weight_average), BASE + (TAUS["s1"] + TAUS["s2"]) / 2)


def test_continual_task_arithmetic_adds_the_scaled_sum_of_task_vectors():
    expected = BASE + 0.3 * torch.tensor([0.0, -1.0, 4.0, -3.0, 4.5])
    assert torch.allclose(_merged(continual_task_arithmetic), expected)
    cfg = config_from_dict({"baselines": {"task_arithmetic_scale": 1.0}})
    assert torch.allclose(_merged(continual_task_arithmetic, cfg), BASE + TAUS["s1"] + TAUS["s2"])


def test_ties_pieces_by_hand():
    vectors = torch.stack([torch.tensor([0.5, -1.0, 1.5, -2.0, 2.5]), TAUS["s2"]])
    trimmed = trim_top(vectors, 0.4)  # d=5: the cut is the 3rd smallest magnitude, as in the reference code
    assert torch.equal(trimmed, torch.tensor([[0.0, 0.0, 1.5, -2.0, 2.5], [-1.0, 1.0, 1.0, 1.0, 0.0]]))
    # signs of the column sums [-1, 1, 2.5, -1, 2.5]: -, +, +, -, +; only agreeing entries are summed
    assert torch.equal(ties_merge(vectors, 0.4), torch.tensor([-1.0, 1.0, 2.5, -2.0, 2.5]))


def test_continual_ties_follows_fusionbench_recursion():
    cfg = config_from_dict({"baselines": {"ties_scale": 0.5, "ties_keep_frac": 0.4}})
    # M1 = 0.5 * tau1 = [0.5, -1, 1.5, -2, 2.5]; M2 = M1 + 0.5 * TIES([M1, tau2]) (see test above)
    expected = BASE + torch.tensor([0.0, -0.5, 2.75, -3.0, 3.75])
    assert torch.allclose(_merged(continual_ties, cfg), expected)


@pytest.mark.parametrize("fn", [continual_weight_average, continual_task_arithmetic, continual_ties])
def test_competitors_open_each_source_once_in_order(fn):
    opened = []
    ctx = _ctx()
    spy = MethodContext(**{**ctx.__dict__, "open_source": lambda n: (opened.append(n), ctx.open_source(n))[1]})
    fn(spy, MemoryTracker(20, enabled=False))
    assert opened == ["s1", "s2"]
