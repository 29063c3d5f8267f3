"""Device choice (auto: CUDA, then MPS, then CPU), AMP only on CUDA, data moved once and followed by batches."""

from __future__ import annotations

import pytest
import torch

from grasp_core import device as dev
from grasp_core.data import Batches
from grasp_core.errors import ConfigError
from tests.conftest import tiny_split


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setitem(dev._AVAILABLE, "cuda", lambda: cuda)
    monkeypatch.setitem(dev._AVAILABLE, "mps", lambda: mps)
    assert dev.resolve_device("auto") == torch.device(expected)
    assert dev.resolve_device("cpu") == torch.device("cpu")


def test_an_absent_or_unknown_device_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(dev._AVAILABLE, "cuda", lambda: False)
    with pytest.raises(ConfigError, match="device 'cuda' was asked for but torch sees none.*GRASP_DEVICE"):
        dev.resolve_device("cuda")
    with pytest.raises(ConfigError, match="device 'tpu' is unknown; choose one of: auto, cpu, cuda, mps"):
        dev.resolve_device("tpu")


def test_amp_is_cuda_only():
    with pytest.raises(ConfigError, match="mixed precision .* needs CUDA"):
        dev.autocast(torch.device("cpu"), True)
    with dev.autocast(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled()


def test_batches_follow_the_split_device_and_cpu_batches_are_unchanged():
    split = tiny_split(20)
    before = [(x.clone(), y.clone()) for x, y in Batches(split, 8, shuffle=True, augment=True, seed=3)]
    after = list(Batches(split.to("cpu"), 8, shuffle=True, augment=True, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before, after, strict=True))
    # the meta device stands in for a GPU: every batch tensor lives where the split was moved, none on the CPU
    for x, y in Batches(split.to("meta"), 8, shuffle=True, augment=True, seed=3):
        assert x.device.type == y.device.type == "meta" and x.shape[1:] == (1, 4, 4)
