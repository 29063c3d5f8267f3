"""Shared tiny fixtures: seeded tensors and models, a tiny params.yaml, nothing downloaded."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from torch import nn

from grasp_core.data import DomainData, Split

if TYPE_CHECKING:
    from grasp_core.config import Config
    from grasp_core.methods import MethodContext


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: the before/after picture of "nothing written"."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@contextmanager
def writes_nothing(root: Path, allow: Collection[str] = ()) -> Iterator[None]:
    """Assert that the block leaves every file under `root` as it was (`allow`: relative paths it may add).
    Put any `pytest.raises` inside it, so the check runs after the refusal."""
    before = tree(root)
    yield
    after = {k: v for k, v in tree(root).items() if k not in allow or k in before}
    changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
    assert not changed, f"written under {root}: {changed}"


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    """Every test ends with torch's intra-op thread count as it found it: an in-process CLI run sets the
    count (`--threads`, `execution.apply`), and float sums round by thread count, so a leaked count would
    change the numbers of whichever test runs next."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


TINY_PARAMS = {
    "seed": 0,
    "data": {"domains": 3, "image_size": 8, "target_train_frac": 0.3},
    "base": {"mode": "pretrain", "epochs": 1},
    "sources": {"epochs": 1, "batch_size": 64},
    "finetune": {"initial_epochs": 1, "epochs": 1, "batch_size": 32},
    "baselines": {"methods": ["transfer_off", "target_only", "best_single", "fusion", "ensemble"]},
}


class TinyMLP(nn.Module):
    """Buffer-free 2-layer MLP on (B, 1, 4, 4) inputs; `sign` flips the logits (anti-aligned twins)."""

    def __init__(self, num_classes: int = 3, hidden: int = 8, sign: float = 1.0) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, hidden), nn.Linear(hidden, num_classes)
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_split(n: int, num_classes: int = 3, seed: int = 0, shape: tuple[int, ...] = (1, 4, 4)) -> Split:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.rand((n, *shape), generator=gen) * 0.5 + y.view(-1, 1, 1, 1).float() / num_classes
    return Split(x=x.clamp(0, 1), y=y, files=tuple(f"{i}.png" for i in range(n)))


@pytest.fixture
def tiny_domain() -> DomainData:
    return DomainData(name="t", classes=("0", "1", "2"), train=tiny_split(96, seed=1), val=tiny_split(30, seed=2),
                      test=tiny_split(30, seed=3))


def trained_mlp(domain: DomainData, steps: int, seed: int) -> TinyMLP:
    """A seeded TinyMLP after `steps` full-batch SGD steps on `domain`'s train split: sources whose quality
    differs by their number of steps."""
    torch.manual_seed(seed)
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(domain.train.x), domain.train.y).backward()
        optimizer.step()
    return model


def quick_config(**transfer: object) -> Config:
    """The default Config with one epoch of fine-tuning, no augmentation and `transfer` overrides."""
    from grasp_core.config import Config

    cfg = Config()
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=1, epochs=1),
                               data=dataclasses.replace(cfg.data, augment=False),
                               transfer=dataclasses.replace(cfg.transfer, **transfer))


def tiny_method_context(domain: DomainData, models: Mapping[str, nn.Module], cfg: Config,
                        domains: tuple[str, ...] = ()) -> MethodContext:
    """A MethodContext for target `domain` whose sources are `models` (each opened as a fresh copy) and whose
    base is a fresh TinyMLP."""
    from grasp_core.grasp import target_loaders
    from grasp_core.memory import model_param_bytes, param_shapes_of
    from grasp_core.methods import MethodContext

    unit = TinyMLP()
    return MethodContext(cfg=cfg, loaders=target_loaders(domain, cfg), source_names=tuple(models),
                         open_source=lambda name: copy.deepcopy(models[name]), open_base=TinyMLP,
                         model_param_bytes=model_param_bytes(unit), param_shapes=param_shapes_of(unit),
                         target_name="t", domains=domains)


@pytest.fixture
def tmp_params(tmp_path: Path):
    """Write a params.yaml (TINY_PARAMS updated by `overrides`) and return its path."""

    def write(overrides: dict | None = None, name: str = "params.yaml") -> Path:
        raw = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
        for key, value in (overrides or {}).items():
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def add_perturbed_source(ws: Path, from_domain: str, name: str) -> None:
    """A new source in `ws`'s drop area: `from_domain`'s checkpoint, every weight nudged (a distinct sha256),
    added under `name` through grasp's own `add_source`."""
    from flows.pipeline.sources import add_source
    from flows.pipeline.workspace import Workspace
    from grasp_core.checkpoints import load_checkpoint, save_checkpoint

    model, header = load_checkpoint(ws / "checkpoints" / "sources" / f"{from_domain}.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(model, ws / "incoming.safetensors", header)
    del model
    add_source(Workspace(ws), ws / "incoming.safetensors", name)
