"""OPCM (orthogonal projection continual merging) on hand-made tiny models: the projection, the scale, O(1)."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from grasp_core.config import Config, config_from_dict
from grasp_core.memory import MemoryTracker
from grasp_core.methods import METHODS, MethodContext
from grasp_core.methods.opcm import continual_opcm, principal_subspace, project_out


class Lin(nn.Module):
    """One (2, 2) weight matrix and a (1,) bias: a matrix and a non-matrix parameter."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())


TAUS = {"s1": (torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([1.0])),
        "s2": (torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([3.0])),
        "s3": (torch.tensor([[0.0, -1.0], [2.0, 0.5]]), torch.tensor([-1.0]))}
BASE = (torch.full((2, 2), 0.5), torch.tensor([0.25]))


def _ctx(names: tuple[str, ...], cfg: Config | None = None, opener=None) -> MethodContext:
    def open_source(name: str) -> nn.Module:
        return Lin(BASE[0] + TAUS[name][0], BASE[1] + TAUS[name][1])

    return MethodContext(cfg=cfg or Config(), loaders=None, source_names=names,  # type: ignore[arg-type]
                         open_source=opener or open_source, open_base=lambda: Lin(*BASE),
                         model_param_bytes=20, param_shapes=frozenset({(2, 2)}))


def _merged(names: tuple[str, ...], cfg: Config | None = None) -> Lin:
    return continual_opcm(_ctx(names, cfg), MemoryTracker(20, enabled=False))  # type: ignore[return-value]


def test_principal_subspace_takes_the_fewest_pairs_reaching_alpha():
    matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0]))  # singular values 3, 2, 1: sum 6
    assert principal_subspace(matrix, 0.5)[0].shape == (3, 1)  # 3 >= 0.5 * 6
    assert principal_subspace(matrix, 0.6)[0].shape == (3, 2)  # 3 < 3.6 <= 5
    assert principal_subspace(matrix, 1.0)[0].shape == (3, 3)
    assert principal_subspace(torch.zeros(3, 3), 0.5)[0].shape == (3, 0)  # nothing merged: nothing to avoid


def test_projected_update_is_orthogonal_to_the_merged_principal_part():
    gen = torch.Generator().manual_seed(0)
    merged, update = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    u, v = principal_subspace(merged, 0.7)
    projected = project_out(update, u, v)
    principal = u @ (u.T @ merged @ v) @ v.T  # U_r diag(s_r) V_r^T
    assert torch.allclose(u.T @ projected @ v, torch.zeros(u.shape[1], v.shape[1]), atol=1e-5)
    assert abs(float((projected * principal).sum())) < 1e-4
    assert float((update * principal).sum()) != pytest.approx(0.0, abs=1e-2)  # the raw update was not orthogonal
    assert torch.allclose(project_out(projected, u, v), projected, atol=1e-5)  # a projection: idempotent


def test_one_source_is_that_source():
    model = _merged(("s2",))
    assert torch.allclose(model.w, BASE[0] + TAUS["s2"][0]) and torch.allclose(model.b, BASE[1] + TAUS["s2"][1])


def test_two_sources_by_hand():
    # S = tau1 = diag(2, 0): principal subspace (alpha 0.5) is e1 e1^T, so tau2 loses its (0, 0) entry:
    # S = [[2, 1], [1, 1]], ||S|| = sqrt(7); mean ||tau|| = (2 + 2) / 2 = 2; bias: mean of 1 and 3.
    model = _merged(("s1", "s2"), config_from_dict({"baselines": {"opcm_alpha": 0.5}}))
    expected = BASE[0] + 2.0 / math.sqrt(7.0) * torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(model.w, expected, atol=1e-6)
    assert torch.allclose(model.b, BASE[1] + 2.0)


def test_merged_update_keeps_the_mean_source_distance():
    model = _merged(("s1", "s2", "s3"))
    mean_norm = sum(float(TAUS[n][0].norm()) for n in TAUS) / 3
    assert float((model.w - BASE[0]).detach().norm()) == pytest.approx(mean_norm, rel=1e-5)


def test_one_source_alive_at_a_time_and_each_opened_once_in_order():
    opened: list[str] = []
    alive: list[weakref.ref] = []

    def opener(name: str) -> nn.Module:
        gc.collect()
        assert not any(ref() is not None for ref in alive), f"a source was still alive when {name} was opened"
        model = Lin(BASE[0] + TAUS[name][0], BASE[1] + TAUS[name][1])
        opened.append(name)
        alive.append(weakref.ref(model))
        return model

    continual_opcm(_ctx(("s3", "s1", "s2"), opener=opener), MemoryTracker(20, enabled=False))
    assert opened == ["s3", "s1", "s2"]


def test_opcm_is_a_registered_method_and_alpha_is_checked():
    from grasp_core.errors import ConfigError

    assert "opcm" in METHODS
    with pytest.raises(ConfigError, match="'baselines.opcm_alpha' = 0.0 is outside"):
        config_from_dict({"baselines": {"opcm_alpha": 0.0}})
