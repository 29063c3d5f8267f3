"""One typed, frozen config read from params.yaml: *what* to compute, never *where* to run it.

Every field is documented here once; other modules refer to the field by its dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grasp_core.errors import ConfigError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data"  # folder holding data/<domain>/{train,val,test}/<class>/*.png
    generator: str = "digits_drift"  # embedded benchmark written to `root` when missing; "none": imported data only
    domains: int = 5  # number of time-ordered domains the generator writes
    first_year: int = 2020  # domain names are years: first_year, first_year + 1, ...
    rotation_step_deg: float = 15.0  # drift: domain t is rotated by t * step degrees
    noise_step: float = 0.04  # drift: Gaussian pixel noise std grows by this per domain (0-1 scale)
    image_size: int = 16  # side in pixels of the written PNGs
    val_frac: float = 0.15  # share of the underlying images held out for every domain's val split
    test_frac: float = 0.25  # share held out for every domain's test split
    target: str = ""  # target domain name; "" = the newest domain
    target_train_frac: float = 0.2  # share of the target's train split used for training
    augment: bool = True  # random +-1 pixel shifts on training batches (the paper augments too)

    def __post_init__(self) -> None:
        _check(self.domains >= 2, f"'data.domains' = {self.domains} must be >= 2: one source and one target")
        _check(self.image_size >= 8, f"'data.image_size' = {self.image_size} must be >= 8")
        _check(0 < self.val_frac < 1 and 0 < self.test_frac < 1 and self.val_frac + self.test_frac < 1,
               "'data.val_frac' + 'data.test_frac' must lie in (0, 1)")
        _check(0 < self.target_train_frac <= 1,
               f"'data.target_train_frac' = {self.target_train_frac} is outside (0, 1]")
        _check(self.noise_step >= 0, f"'data.noise_step' = {self.noise_step} must be >= 0")


@dataclass(frozen=True)
class ImportConfig:
    """How `grasp data import DIR` turns a user's folder tree into the layout of `data.root`.

    Plain `<domain>/<class>/` trees are split stratified and seeded (`seed`) with `data.val_frac` and
    `data.test_frac`; trees that ship `train/val/test` keep their split.
    """

    order_by: str = "name"  # "name": natural sort (year_1-2 < year_3-4 < year_10-11); "number": first integer
    order: list[str] = field(default_factory=list)  # explicit domain order, oldest first; overrides order_by
    image_size: int = 0  # 0: keep the most common size (images of other sizes are resized to it); N: N x N
    channels: str = "auto"  # "auto": the majority mode of the images; "grey" or "rgb": convert every image

    def __post_init__(self) -> None:
        _check(self.order_by in ("name", "number"),
               f"'data_import.order_by' = '{self.order_by}' must be 'name' or 'number'")
        _check(len(set(self.order)) == len(self.order), f"'data_import.order' = {self.order} repeats a domain")
        _check(self.image_size == 0 or self.image_size >= 8,
               f"'data_import.image_size' = {self.image_size} must be 0 (keep) or >= 8")
        _check(self.channels in ("auto", "grey", "rgb"),
               f"'data_import.channels' = '{self.channels}' must be 'auto', 'grey' or 'rgb'")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "small_cnn"  # a key of grasp_core.models.ARCHITECTURES
    weights: str = ""  # optional local file (safetensors or a weights-only torch file) for the base
    # The ImageNet-family networks' input (resnet50, efficientnet_b1, mobilevit_*; small_cnn takes neither):
    image_size: int = 0  # side the network sees; images are resized to it inside the model; 0 = the data's size
    mean: list[float] = field(default_factory=list)  # per-channel mean (1 or 3 values); [] = the arch's default
    std: list[float] = field(default_factory=list)  # per-channel std; [] = the arch's default (ImageNet / timm cfg)

    def __post_init__(self) -> None:
        _check(self.image_size == 0 or self.image_size >= 8,
               f"'model.image_size' = {self.image_size} must be 0 (the data's size) or >= 8")
        for key, values in (("mean", self.mean), ("std", self.std)):
            _check(len(values) in (0, 1, 3), f"'model.{key}' = {values} must hold 0, 1 or 3 values")
        _check(all(v > 0 for v in self.std), f"'model.std' = {self.std} must be > 0")


@dataclass(frozen=True)
class BaseConfig:
    mode: str = "pretrain"  # "pretrain": train the shared base on undrifted held-out images; "init": seeded init
    epochs: int = 10  # pretraining epochs when mode = pretrain
    frac: float = 0.15  # share of the underlying images held out, undrifted, to pretrain the base

    def __post_init__(self) -> None:
        _check(self.mode in ("pretrain", "init"), f"'base.mode' = '{self.mode}' must be 'pretrain' or 'init'")
        _check(self.epochs >= 0, f"'base.epochs' = {self.epochs} must be >= 0")
        _check(0 < self.frac < 0.5, f"'base.frac' = {self.frac} is outside (0, 0.5)")


@dataclass(frozen=True)
class SourcesConfig:
    epochs: int = 10  # epochs to train each source model from the base on its own domain
    lr: float = 2e-3  # AdamW learning rate for source training
    batch_size: int = 32

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, f"'sources.epochs' = {self.epochs} must be >= 0")
        _check(self.lr > 0, f"'sources.lr' = {self.lr} must be > 0")
        _check(self.batch_size >= 1, f"'sources.batch_size' = {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class AlignConfig:
    batches: int = 1  # target train batches whose summed gradients give the alignment (paper: 1)
    batch_size: int = 32  # images per alignment batch (paper: 32)
    eval_mode: bool = False  # target in eval mode too while aligning (paper: false, the target in train mode:
    #                          batch BN statistics, and the alignment forward moves its running statistics)
    criterion: str = "direction"  # a key of grasp_core.align.ALIGNMENTS: "gradient" (paper): cos(grad source,
    #                               grad target) on the batches; "direction": cos(theta_source - theta_target,
    #                               -grad target), i.e. does moving the tensor toward the source descend the
    #                               target loss (first order)

    def __post_init__(self) -> None:
        _check(self.batches >= 1, f"'align.batches' = {self.batches} must be >= 1")
        _check(self.batch_size >= 1, f"'align.batch_size' = {self.batch_size} must be >= 1")


GRANULARITIES = ("tensor", "channel")
ORDERS = ("given", "nearest", "aligned", "scored")
STARTS = ("first", "mean", "auto")
AFTER_MEAN = ("policy", "none")
SCHEDULES = ("staged", "final")


@dataclass(frozen=True)
class TransferConfig:
    """The transfer rule. Defaults are the winner of `grasp bench ablation` (docs/results.md); the official rule,
    bit for bit, is policy paper, threshold 0.3, granularity tensor, order given, start first (after_mean
    policy), bn_recalibrate, rollback and keep_global_best false (with align.batches 1, align.eval_mode false,
    align.criterion gradient)."""

    policy: str = "soft"  # a key of grasp_core.transfer.POLICIES: paper (hard copy), soft (interpolate), none
    threshold: float = 0.0  # copy a tensor when its alignment (a cosine) exceeds this (strict >); paper: 0.3
    granularity: str = "tensor"  # "tensor" (paper): one cosine per tensor; "channel": one per output row of
    #                              every tensor of >= 2 dims (conv filter / linear row); 1-D tensors stay whole
    order: str = "scored"  # merge order: "given" (paper: as listed), "nearest" (time nearest the target first,
    #                       time = the data's domain list), "aligned" (streaming pre-pass: cos(task vector, -target
    #                       gradient at the base), high first), "scored" (streaming pre-pass: zero-shot target-val
    #                       accuracy, best first: the source best_single picks starts; ties: lower val loss, then
    #                       the smaller weights hash, never the names or their listing)
    bn_recalibrate: bool = True  # after every merge step (whatever was transferred, also with policy none),
    #                              recompute BatchNorm running statistics on target train images
    rollback: bool = True  # reject a source whose merge + fine-tune lowers val accuracy: restore the weights
    #                         from before the merge and mark the stage `rejected` (one extra weight copy)
    keep_global_best: bool = False  # end on the best-val stage's weights across stages (one extra copy)
    start: str = "auto"  # the model step 1 adopts: "first" (paper: the order's first source), "mean" (streaming
    #                       parameter mean of every source), "auto" (the better of the two on target val,
    #                       zero-shot; grasp_core/start.py). The order's other sources are merged after it.
    check: bool = False  # refuse a stage's transfer when the target's val accuracy right after it (before any
    #                      fine-tuning) is below the val before it; the stage then fine-tunes untransferred
    after_mean: str = "none"  # a source the mean start averages: "none" (held by the start already: its stage only
    #                           fine-tunes) or "policy" (merged again with `policy`); a source the start does not
    #                           hold (an incremental run's new one) always gets `policy` (grasp_core/start.py)

    def __post_init__(self) -> None:
        _check(-1.0 <= self.threshold <= 1.0,
               f"'transfer.threshold' = {self.threshold} is outside [-1, 1]: it is a cosine")
        _check(self.granularity in GRANULARITIES,
               f"'transfer.granularity' = '{self.granularity}' must be one of: {', '.join(GRANULARITIES)}")
        _check(self.order in ORDERS, f"'transfer.order' = '{self.order}' must be one of: {', '.join(ORDERS)}")
        _check(self.start in STARTS, f"'transfer.start' = '{self.start}' must be one of: {', '.join(STARTS)}")
        _check(self.after_mean in AFTER_MEAN,
               f"'transfer.after_mean' = '{self.after_mean}' must be one of: {', '.join(AFTER_MEAN)}")


@dataclass(frozen=True)
class FinetuneConfig:
    initial_epochs: int = 3  # target epochs on the first source before any merge (paper: 3)
    epochs: int = 3  # target epochs after each merged source (paper: 3)
    lr: float = 1e-3  # AdamW lr; the paper's 5e-5 suits ImageNet-pretrained nets, not a small CNN
    weight_decay: float = 0.01  # AdamW weight decay (paper: 0.01, on every parameter)
    batch_size: int = 32  # paper: 32, drop_last
    schedule: str = "staged"  # "staged" (paper): initial_epochs, then epochs after each merged source; "final":
    #                           the same total epochs as one last stage after every merge (merges run untrained,
    #                           so the rollback guard judges them zero-shot); every training method alike; core engine

    def __post_init__(self) -> None:
        _check(self.schedule in SCHEDULES,
               f"'finetune.schedule' = '{self.schedule}' must be one of: {', '.join(SCHEDULES)}")
        _check(self.initial_epochs >= 0, f"'finetune.initial_epochs' = {self.initial_epochs} must be >= 0")
        _check(self.epochs >= 0, f"'finetune.epochs' = {self.epochs} must be >= 0")
        _check(self.lr > 0, f"'finetune.lr' = {self.lr} must be > 0")
        _check(self.weight_decay >= 0, f"'finetune.weight_decay' = {self.weight_decay} must be >= 0")
        _check(self.batch_size >= 1, f"'finetune.batch_size' = {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class BaselinesConfig:
    methods: list[str] = field(  # keys of grasp_core.methods.METHODS run next to GRASP
        default_factory=lambda: ["transfer_off", "target_only", "best_single", "fusion", "ensemble"])
    task_arithmetic_scale: float = 0.3  # lambda of continual task arithmetic (FusionBench's default, 0.3)
    ties_scale: float = 0.5  # lambda of continual TIES-merging (FusionBench's default, 0.5)
    ties_keep_frac: float = 0.2  # share of each task vector kept by magnitude (FusionBench's threshold 20 %)
    opcm_alpha: float = 0.5  # OPCM: share of the merged update's singular-value sum whose subspace new updates avoid

    def __post_init__(self) -> None:
        _check(self.task_arithmetic_scale > 0,
               f"'baselines.task_arithmetic_scale' = {self.task_arithmetic_scale} must be > 0")
        _check(self.ties_scale > 0, f"'baselines.ties_scale' = {self.ties_scale} must be > 0")
        _check(0 < self.ties_keep_frac <= 1, f"'baselines.ties_keep_frac' = {self.ties_keep_frac} is outside (0, 1]")
        _check(0 < self.opcm_alpha <= 1, f"'baselines.opcm_alpha' = {self.opcm_alpha} is outside (0, 1]")


@dataclass(frozen=True)
class ValidationConfig:
    """What the data gate (Great Expectations) expects. Unset, the data is judged against its own majority."""

    image_size: int = 0  # height and width every image must have; 0: the most common size in the data
    channels: str = "auto"  # "grey" (1 channel) or "rgb" (3) for every image; "auto": the most common count
    classes: list[str] = field(default_factory=list)  # the class folders every split must hold, exactly;
    # []: those of the first domain's train split
    min_per_class: int = 1  # fewest readable images any class folder of any split may hold

    def __post_init__(self) -> None:
        _check(self.image_size >= 0, f"'validation.image_size' = {self.image_size} must be 0 (any) or >= 1")
        _check(self.channels in ("auto", "grey", "rgb"),
               f"'validation.channels' = '{self.channels}' must be 'auto', 'grey' or 'rgb'")
        _check(len(set(self.classes)) == len(self.classes), f"'validation.classes' = {self.classes} repeats a class")
        _check(self.min_per_class >= 1, f"'validation.min_per_class' = {self.min_per_class} must be >= 1")


@dataclass(frozen=True)
class PromoteConfig:
    tolerance: float = 0.0  # candidate VALIDATION accuracy may trail the champion's by at most this (0-1)
    max_param_mb: float = 0.0  # refuse candidates whose parameters exceed this many MiB; 0 = no limit

    def __post_init__(self) -> None:
        _check(0.0 <= self.tolerance <= 1.0, f"'promote.tolerance' = {self.tolerance} is outside [0, 1]")
        _check(self.max_param_mb >= 0, f"'promote.max_param_mb' = {self.max_param_mb} must be >= 0")


@dataclass(frozen=True)
class LimitsConfig:
    """Caps on a checkpoint, checked from its file size and safetensors header before any tensor is read
    (a file dropped into the sources area or passed to add-source is untrusted)."""

    checkpoint_max_bytes: int = 4 * 2**30  # whole file
    header_max_bytes: int = 8 * 2**20  # the safetensors JSON header (names, dtypes, shapes, metadata)
    tensor_max_bytes: int = 4 * 2**30  # sum of the tensor bytes the header declares

    def __post_init__(self) -> None:
        for key in ("checkpoint_max_bytes", "header_max_bytes", "tensor_max_bytes"):
            _check(getattr(self, key) >= 1, f"'limits.{key}' = {getattr(self, key)} must be >= 1")


@dataclass(frozen=True)
class Config:
    seed: int = 0  # seeds data generation, initialisation, shuffling and augmentation
    data: DataConfig = field(default_factory=DataConfig)
    data_import: ImportConfig = field(default_factory=ImportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    on_bad_source: str = "fail"  # a refused source checkpoint at run time: "fail" the run, or "skip" it (recorded)

    def __post_init__(self) -> None:
        _check(self.on_bad_source in ("fail", "skip"),
               f"'on_bad_source' = '{self.on_bad_source}' must be 'fail' or 'skip'")


def _build(cls: type, raw: Any, where: str, prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}'{prefix.rstrip('.') or '<top>'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    if unknown := sorted(set(raw) - set(hints)):
        raise ConfigError(f"{where}unknown key '{prefix}{unknown[0]}'; known here: {', '.join(hints)}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, where, prefix + name)
    try:
        return cls(**values)
    except ValueError as err:  # range checks from __post_init__
        raise ConfigError(f"{where}{err}") from None


def _coerce(kind: Any, value: Any, where: str, key: str) -> Any:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _build(kind, value, where, key + ".")
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if item is float and isinstance(value, list):
            value = [float(v) if type(v) is int else v for v in value]
        if not isinstance(value, list) or any(type(v) is not item for v in value):
            raise ConfigError(f"{where}'{key}' must be a list of {item.__name__}, got {value!r}")
        return list(value)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:  # exact: rejects True for int and "1" for int
        raise ConfigError(f"{where}'{key}' must be {kind.__name__}, got {value!r}")
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate params.yaml; `overrides` maps dotted keys to values (tests, benches)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(Config, raw, f"{path}: ")


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Config:
    """Validate a raw mapping shaped like params.yaml."""
    return _build(Config, raw, f"{where}: ")


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def replace(cfg: Config, **dotted: Any) -> Config:
    """A copy of `cfg` with dotted keys (written with '__' for '.') replaced and re-validated."""
    raw = dataclasses.asdict(cfg)
    for key, value in dotted.items():
        _set_dotted(raw, key.replace("__", "."), value)
    return config_from_dict(raw)


def flatten(cfg: Config) -> dict[str, Any]:
    """The config as dotted keys -> leaf values (MLflow params use these keys)."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk(dataclasses.asdict(cfg), "")
    return out


def config_hash(cfg: Config) -> str:
    """sha256 of the resolved config, stable across key order. `limits` is left out: a cap on what may be
    read changes no result, so raising it must not make every merge look new."""
    raw = dataclasses.asdict(cfg)
    raw.pop("limits")
    text = yaml.safe_dump(raw, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
