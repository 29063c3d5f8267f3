"""One GRASP stage as a unit of work between checkpoints on disk: load, call the core, save.

Used by the Prefect tasks; everything passed in and out is a path, a hash or a detached result.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flows.runtime.execution import AUTO, Compute
from grasp_core.checkpoints import CheckpointHeader, SavedCheckpoint, load_checkpoint, save_checkpoint
from grasp_core.config import Config, config_hash
from grasp_core.data import DomainData, Split, list_domains, load_domain, read_split
from grasp_core.finetune import EpochCallback, evaluate
from grasp_core.grasp import StepResult, run_grasp, target_loaders
from grasp_core.names import check_name, path_inside
from grasp_core.start import merge_config


@dataclass(frozen=True)
class StepArtifact:
    """A finished stage: its target checkpoint on disk and what happened (no live model)."""

    checkpoint: SavedCheckpoint
    result: StepResult | None  # None for a parent loaded from the registry (an incremental run's champion)
    chain_sha256: str  # identifies the merge history: params, target, and every source merged so far
    domain_accuracy: dict[str, float] = field(default_factory=dict)  # test accuracy on every domain (a matrix row)

    @property
    def computed(self) -> StepResult:
        """`result` of a stage this run computed (every stage it registers has one)."""
        assert self.result is not None, f"{self.checkpoint.path}: a registry parent has no StepResult"
        return self.result


@functools.lru_cache(maxsize=4)
def cached_tests(root: Path, classes: tuple[str, ...], compute: Compute = AUTO) -> dict[str, Split]:
    """Every domain's test split, decoded once per process (the columns of the accuracy matrix)."""
    device = compute.torch_device()
    return {d: read_split(root, d, "test", list(classes)).to(device) for d in list_domains(root)}


@functools.lru_cache(maxsize=4)
def cached_target(root: Path, target: str, classes: tuple[str, ...], frac: float, seed: int,
                  compute: Compute = AUTO) -> DomainData:
    """Decode the target domain once per process, whatever the number of stages; moved to the device once."""
    return load_domain(root, target, list(classes), frac, seed).to(compute.torch_device())


def chain_sha256(parent: str, source_sha256: str, cfg: Config, target: str) -> str:
    return hashlib.sha256(f"{parent}|{source_sha256}|{config_hash(cfg)}|{target}".encode()).hexdigest()


def target_step(cfg: Config, data: DomainData, source: SavedCheckpoint, stage: int, parent: StepArtifact | None,
                out_dir: Path, on_epoch: EpochCallback | None = None,
                domains: Mapping[str, Split] | None = None, compute: Compute = AUTO,
                held_by_start: bool = False) -> StepArtifact:
    """GRASP stage `stage`: stage 0 adopts and fine-tunes `source`; later stages merge it into `parent`, with the
    policy `grasp_core.start.merge_config` gives a source the mean start holds (`held_by_start`) or not.

    The chain hash keeps the run's params (not the stage's policy): it names the history, as the registry does.
    """
    name = check_name(source.header.extra.get("domain", source.path.stem), f"{source.path}: header 'domain'")
    like = source.header if parent is None else parent.checkpoint.header
    device = compute.torch_device()
    stream = ((name, load_checkpoint(source.path, like=like, device=device)[0]) for _ in range(1))  # lazy
    target = None if parent is None else load_checkpoint(parent.checkpoint.path, device=device)[0]
    with compute.autocast():
        result = next(run_grasp(stream, target_loaders(data, cfg), merge_config(cfg, held_by_start),
                                on_epoch=on_epoch, target=target, start_stage=stage))
    chain = chain_sha256(parent.chain_sha256 if parent else "", source.sha256, cfg, data.name)
    extra = {"role": "target", "target_domain": data.name, "stage": str(stage), "source_domain": name,
             "source_sha256": source.sha256, "parent_sha256": parent.checkpoint.sha256 if parent else "",
             "chain_sha256": chain}
    header = CheckpointHeader(like.arch, like.num_classes, like.classes, like.input_shape, extra)
    assert result.target is not None
    with compute.autocast():
        row = {d: evaluate(result.target, split, len(data.classes)).accuracy for d, split in (domains or {}).items()}
    path = path_inside(out_dir, name, f"{source.path}: header 'domain'", f"stage{stage:02d}-",
                       f"-{chain[:12]}.safetensors")
    saved = save_checkpoint(result.target, path, header)
    return StepArtifact(checkpoint=saved, result=result.detached(), chain_sha256=chain, domain_accuracy=row)
