"""GRASP step 2b: transfer policies, registered by name (`transfer.policy`).

A policy changes the target in place from the source and the alignment scores and returns the
names of the parameter tensors it changed. Add one with `@register_policy("name")`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from grasp_core.config import TransferConfig
from grasp_core.registry import lookup, registrar

Policy = Callable[[nn.Module, nn.Module, Mapping[str, float], TransferConfig], list[str]]
POLICIES: dict[str, Policy] = {}


register_policy = registrar(POLICIES, "policy")


def get_policy(name: str) -> Policy:
    return lookup(POLICIES, name, "transfer.policy")


@register_policy("paper")
@torch.no_grad()
def hard_copy_above(target: nn.Module, source: nn.Module, scores: Mapping[str, float],
                    cfg: TransferConfig) -> list[str]:
    """The official rule: copy whole source tensors whose alignment exceeds the threshold (strict >).

    Parameters only; buffers (BatchNorm running statistics) stay the target's.
    """
    source_params = dict(source.named_parameters())
    copied = [name for name, score in scores.items() if score > cfg.threshold]
    target_params = dict(target.named_parameters())
    for name in copied:
        target_params[name].copy_(source_params[name])
    return copied


@register_policy("none")
def no_transfer(target: nn.Module, source: nn.Module, scores: Mapping[str, float],
                cfg: TransferConfig) -> list[str]:
    """Transfer switched off: GRASP's schedule reduces to sequential fine-tuning (a control)."""
    return []
