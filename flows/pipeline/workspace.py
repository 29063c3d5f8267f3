"""Where a run keeps its files, and the plain-Python steps both runners share: materialise the
data, build the base, train missing sources (re-using any whose recipe is unchanged), open models."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.runtime.execution import AUTO, Compute
from grasp_core.checkpoints import (
    CheckpointHeader,
    SavedCheckpoint,
    file_sha256,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from grasp_core.config import Config
from grasp_core.data import DomainData, check_layout, list_domains, load_domain, read_split
from grasp_core.data.drift import BASE_DIR
from grasp_core.data.generators import GENERATORS, get_generator
from grasp_core.data.layout import natural_key
from grasp_core.durable import write_text_durably
from grasp_core.errors import ConfigError, DataLayoutError
from grasp_core.finetune import EpochCallback
from grasp_core.names import path_inside
from grasp_core.sources import build_base, train_source
from grasp_core.threads import SOURCE_TRAINING_THREADS, pinned_threads

if TYPE_CHECKING:
    from torch import nn

GENERATOR_MARKER = "_generator.json"


@dataclass(frozen=True)
class Workspace:
    """Paths of one project folder (the current directory by default)."""

    root: Path

    def data(self, cfg: Config) -> Path:
        return self.root / cfg.data.root

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def sources(self) -> Path:
        return self.checkpoints / "sources"

    @property
    def base(self) -> Path:
        return self.checkpoints / "base.safetensors"

    def source(self, domain: str) -> Path:
        """`checkpoints/sources/<domain>.safetensors`; refuses a domain that is not a safe name."""
        return path_inside(self.sources, domain, "domain", suffix=".safetensors")

    def targets(self, target: str) -> Path:
        """`checkpoints/targets/<target>/`, where a target's stage checkpoints go."""
        return path_inside(self.checkpoints / "targets", target, "target domain")


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _recipe(cfg: Config) -> dict[str, object]:
    """What generated data depends on (the marker's content)."""
    data = asdict(cfg.data)
    for key in ("target", "target_train_frac", "augment", "root"):
        data.pop(key)
    return {"generator": cfg.data.generator, "seed": cfg.seed, "data": data, "base": cfg.base.mode}


def data_is_current(cfg: Config, ws: Workspace) -> bool:
    """The data folder holds user data (no marker) or data generated from this config's recipe: `materialise_data`
    leaves it as it is."""
    root = ws.data(cfg)
    marker = root / GENERATOR_MARKER
    if not root.exists():
        return False
    if not marker.exists():
        return True
    try:
        return json.loads(marker.read_text()) == _recipe(cfg)
    except (OSError, ValueError):  # a truncated marker: generated data of unknown recipe, regenerated
        return False


def materialise_data(cfg: Config, ws: Workspace) -> tuple[list[str], bool]:
    """Generate the embedded benchmark unless the data folder holds it (or user data) already.

    Returns (domains, generated_now). Generated data carries a marker with its recipe; a stale one
    is regenerated, a folder without a marker (such as one written by `grasp data import`, whose record
    is `_import.json`) is user data and is never touched.
    """
    root = ws.data(cfg)
    if data_is_current(cfg, ws):
        return list_domains(root), False
    if cfg.data.generator in ("", "none"):
        raise DataLayoutError(f"{root}: no data and 'data.generator' is '{cfg.data.generator}'; "
                              "import your images with `grasp data import DIR` or set 'data.generator: digits_drift'")
    if cfg.data.generator not in GENERATORS:
        raise ConfigError(f"'data.generator' = '{cfg.data.generator}' is unknown; choose: "
                          f"{', '.join(GENERATORS)}, or none (data comes from `grasp data import`)")
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    names = get_generator(cfg.data.generator)(tmp, cfg.data, cfg.base, cfg.seed)
    write_text_durably(tmp / GENERATOR_MARKER, json.dumps(_recipe(cfg), sort_keys=True, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return names, True


def resolve_roles(cfg: Config, domains: list[str]) -> tuple[str, list[str]]:
    """(target, sources oldest first). The target defaults to the newest domain."""
    target = cfg.data.target or domains[-1]
    if target not in domains:
        raise ConfigError(f"'data.target' = '{target}' is not a domain; domains are: {', '.join(domains)}")
    sources = [d for d in domains if d != target]
    if not sources:
        raise DataLayoutError(f"only the target domain '{target}' exists; GRASP needs at least one source domain")
    return target, sources


def data_fingerprint(root: Path, domain: str) -> str:
    """sha256 over (relative path, size) of a domain's files: cheap change detection."""
    files = sorted(p for p in (root / domain).rglob("*") if p.is_file())
    return _sha([(str(p.relative_to(root)), p.stat().st_size) for p in files])


def _reusable(path: Path, recipe: str) -> bool:
    """An unchanged recipe, or a source that arrived from elsewhere (never retrained or overwritten)."""
    try:
        extra = read_header(path).extra if path.exists() else {}
        return extra.get("recipe_sha256") == recipe or extra.get("origin") == "added"
    except Exception:  # noqa: BLE001 - an unreadable old file is simply rebuilt
        return False


def ensure_base(cfg: Config, ws: Workspace, classes: list[str], input_shape: tuple[int, int, int],
                on_epoch: EpochCallback | None = None, compute: Compute = AUTO) -> tuple[SavedCheckpoint, bool]:
    """Build (or re-use) the shared base. Returns (checkpoint, trained_now)."""
    root = ws.data(cfg)
    recipe_of = {"arch": cfg.model.arch, "weights": cfg.model.weights, "base": asdict(cfg.base), "seed": cfg.seed,
                 "sources": asdict(cfg.sources), "classes": classes, "shape": input_shape,
                 "data": data_fingerprint(root, BASE_DIR) if (root / BASE_DIR).exists() else ""}
    if cfg.model.image_size or cfg.model.mean or cfg.model.std:  # only when set: older recipes keep their hash
        recipe_of["input"] = [cfg.model.image_size, cfg.model.mean, cfg.model.std]
    recipe = _sha(recipe_of)
    if _reusable(ws.base, recipe):
        return SavedCheckpoint(ws.base, file_sha256(ws.base), read_header(ws.base)), False
    pretrain = None
    if cfg.base.mode == "pretrain":
        if not (root / BASE_DIR / "train").is_dir():
            raise DataLayoutError(f"{root / BASE_DIR / 'train'}: missing; 'base.mode: pretrain' needs held-out "
                                  "base images there, or set 'base.mode: init'")
        pretrain = read_split(root, BASE_DIR, "train", classes)
    with compute.autocast():
        model = build_base(cfg, len(classes), input_shape, pretrain, on_epoch=on_epoch, device=compute.torch_device())
    header = CheckpointHeader(cfg.model.arch, len(classes), tuple(classes), input_shape,
                              {"role": "base", "recipe_sha256": recipe})
    return save_checkpoint(model, ws.base, header), True


def source_seed(cfg: Config, domains: list[str], name: str) -> int:
    """Seed of the source model of domain `name`: fixed by its place among all domains (time order), so a
    domain's source is the same model whichever domain is the target (`--all-targets` trains it once)."""
    return cfg.seed + 1 + sorted(domains, key=natural_key).index(name)


def ensure_source(cfg: Config, ws: Workspace, name: str, classes: list[str], base: SavedCheckpoint, seed: int,
                  on_epoch: EpochCallback | None = None, compute: Compute = AUTO) -> tuple[SavedCheckpoint, bool]:
    """Train (or re-use) the source model of domain `name`, fine-tuned from the base. The domain's images
    are decoded only when it trains: a re-used source costs a fingerprint of its file list."""
    path = ws.source(name)
    recipe = _sha({"base": base.sha256, "sources": asdict(cfg.sources), "seed": seed, "augment": cfg.data.augment,
                   "data": data_fingerprint(ws.data(cfg), name), "threads": SOURCE_TRAINING_THREADS})
    if _reusable(path, recipe):
        return SavedCheckpoint(path, file_sha256(path), read_header(path)), False
    domain = load_domain(ws.data(cfg), name, classes)
    model, header = load_checkpoint(base.path, device=compute.torch_device())
    with compute.autocast(), pinned_threads(SOURCE_TRAINING_THREADS):  # same bytes on every runner
        stage = train_source(model, domain, cfg, seed, on_epoch)
    extra = {"role": "source", "domain": domain.name, "base_sha256": base.sha256, "recipe_sha256": recipe,
             "val_accuracy": f"{stage.best_val_accuracy:.4f}"}
    saved = save_checkpoint(model, path, CheckpointHeader(header.arch, header.num_classes, header.classes,
                                                          header.input_shape, extra))
    from flows.pipeline.source_ledger import record_source

    record_source(ws, name, saved.sha256, "trained")
    return saved, True


def source_opener(ws: Workspace, like: CheckpointHeader, compute: Compute = AUTO) -> Callable[[str], nn.Module]:
    """`open_source(name)` for MethodContext: loads and checks one source checkpoint."""
    return lambda name: load_checkpoint(ws.source(name), like=like, device=compute.torch_device())[0]


def load_target(cfg: Config, ws: Workspace, target: str, classes: list[str],
                compute: Compute = AUTO) -> DomainData:
    """The target domain, decoded once and moved once to the compute device."""
    frac = cfg.data.target_train_frac
    return load_domain(ws.data(cfg), target, classes, frac, cfg.seed).to(compute.torch_device())


def layout_classes(cfg: Config, ws: Workspace) -> list[str]:
    return check_layout(ws.data(cfg))
