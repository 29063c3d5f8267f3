"""The shared base and the source models trained from it, as in practice: every source is a
fine-tune of one base, which is what makes their parameter tensors comparable."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from grasp_core.checkpoints import load_weights_file
from grasp_core.config import Config
from grasp_core.data import Batches, DomainData, Split
from grasp_core.finetune import EpochCallback, StageResult, train_epochs
from grasp_core.models import build_model, input_spec


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_base(cfg: Config, num_classes: int, input_shape: tuple[int, int, int], pretrain: Split | None,
               val: Split | None = None, on_epoch: EpochCallback | None = None,
               device: torch.device | str = "cpu") -> nn.Module:
    """The shared base: a seeded initialisation, pretrained on the held-out undrifted pool when
    `base.mode` is "pretrain" (`pretrain` must then be given). Initialised on the CPU (the same weights on
    every device), then moved with its data to `device` once."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model.arch, num_classes, input_shape,
                        input_spec(cfg.model.image_size, cfg.model.mean, cfg.model.std))
    if cfg.model.weights:
        load_weights_file(model, Path(cfg.model.weights), cfg.limits)
    model.to(device)
    if cfg.base.mode == "pretrain" and pretrain is not None and cfg.base.epochs > 0:
        pretrain = pretrain.to(device)
        batches = Batches(pretrain, cfg.sources.batch_size, shuffle=True, augment=cfg.data.augment, seed=cfg.seed)
        train_epochs(model, batches, val.to(device) if val is not None else pretrain, cfg.base.epochs, cfg.sources.lr,
                     cfg.finetune.weight_decay, on_epoch=on_epoch)
    return model


def train_source(base: nn.Module, domain: DomainData, cfg: Config, seed: int,
                 on_epoch: EpochCallback | None = None) -> StageResult:
    """Fine-tune `base` in place on one source domain (best val epoch of its own val split kept), on the
    device `base` lives on (the domain's tensors follow it, once)."""
    seed_everything(seed)
    domain = domain.to(next(base.parameters()).device)
    batches = Batches(domain.train, cfg.sources.batch_size, shuffle=True, augment=cfg.data.augment, seed=seed)
    return train_epochs(base, batches, domain.val, cfg.sources.epochs, cfg.sources.lr, cfg.finetune.weight_decay,
                        on_epoch=on_epoch)
