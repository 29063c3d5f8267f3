"""Checkpoints as safetensors with a header; nothing here ever unpickles.

Header keys (safetensors string metadata): `arch`, `num_classes`, `classes` (JSON list),
`input_shape` (JSON [C, H, W]), `tensors_sha256` (hash of every tensor's name, dtype, shape and bytes),
`header_sha256` (hash of every other metadata key and value, `tensors_sha256` included, so the integrity
hash covers the metadata too), plus free-form extras such as `domain`, `role` and `base_sha256`.

The hashes detect corruption and edits made without grasp; they are not signatures. Extras that claim a
fact (`base_sha256`, `origin`) stay claims until the caller checks them against what they name.
Sizes are capped (`LimitsConfig`) from the file size and the JSON header before any tensor is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from grasp_core.config import LimitsConfig
from grasp_core.durable import write_bytes_durably
from grasp_core.errors import CheckpointMismatchError
from grasp_core.models import build_model

StateDict = dict[str, torch.Tensor]
_RESERVED = ("arch", "num_classes", "classes", "input_shape", "tensors_sha256", "header_sha256")
DEFAULT_LIMITS = LimitsConfig()


class CheckpointTooLargeError(CheckpointMismatchError):
    """A checkpoint (file, header or declared tensor bytes) is over its cap in `limits`."""


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint claims to be."""

    arch: str
    num_classes: int
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    extra: dict[str, str] = field(default_factory=dict)

    def to_metadata(self, tensors_sha256: str) -> dict[str, str]:
        meta = {**self.extra, "arch": self.arch, "num_classes": str(self.num_classes),
                "classes": json.dumps(list(self.classes)), "input_shape": json.dumps(list(self.input_shape)),
                "tensors_sha256": tensors_sha256}
        meta.pop("header_sha256", None)
        return {**meta, "header_sha256": header_sha256(meta)}


def header_sha256(meta: dict[str, str]) -> str:
    """sha256 of every metadata key and value except `header_sha256` itself (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class SavedCheckpoint:
    path: Path
    sha256: str  # of the whole file: the content hash lineage and DVC checks compare
    header: CheckpointHeader


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(state: StateDict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(model: nn.Module, path: Path, header: CheckpointHeader) -> SavedCheckpoint:
    """Write weights and buffers atomically and durably (fsync'd temporary file, rename, folder fsync)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_durably(path, _canonical(save(state, metadata=header.to_metadata(tensors_sha256(state)))))
    return SavedCheckpoint(path=path, sha256=file_sha256(path), header=header)


def _canonical(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the metadata map in hash-map order, which changes from process to process, so the
    same weights and header gave different file bytes (and file sha256) in two runs. Sorting the header
    (data offsets are relative to the data block, so they stay valid) makes the file a function of its
    content: equal seeds give equal checkpoint hashes on every runner.
    """
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data block stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + blob[8 + size:]


def read_header(path: Path, limits: LimitsConfig = DEFAULT_LIMITS) -> CheckpointHeader:
    """Parse only the header; refuses anything that is not a well-formed grasp safetensors file, is over a
    cap of `limits`, or whose metadata does not match its `header_sha256`."""
    _check_file(path)
    check_sizes(path, limits)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointMismatchError(f"{path}: not a readable safetensors file ({err}); "
                                      "checkpoints must be safetensors written by grasp") from None
    if missing := [k for k in _RESERVED if k not in meta]:
        raise CheckpointMismatchError(f"{path}: header lacks {missing}; re-save it with grasp_core.checkpoints "
                                      "(files written before grasp 0.2 lack header_sha256)")
    if header_sha256(meta) != meta["header_sha256"]:
        raise CheckpointMismatchError(f"{path}: header metadata does not match its header_sha256 (corrupt or "
                                      "edited); re-save it with grasp_core.checkpoints")
    extra = {k: v for k, v in meta.items() if k not in _RESERVED}
    return CheckpointHeader(arch=meta["arch"], num_classes=int(meta["num_classes"]),
                            classes=tuple(json.loads(meta["classes"])),
                            input_shape=tuple(json.loads(meta["input_shape"])), extra=extra)  # type: ignore[arg-type]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: checkpoint not found")
    if path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise CheckpointMismatchError(f"{path}: pickle-based checkpoints are never loaded; convert it to "
                                      "safetensors (safetensors.torch.save_file) first")
    if path.stat().st_size == 0:
        raise CheckpointMismatchError(f"{path}: empty file")


def check_sizes(path: Path, limits: LimitsConfig = DEFAULT_LIMITS) -> None:
    """Refuse a file over `limits` from its size and its JSON header alone (at most `header_max_bytes` read)."""
    size = path.stat().st_size
    if size > limits.checkpoint_max_bytes:
        raise CheckpointTooLargeError(f"{path}: {size} bytes is over limits.checkpoint_max_bytes "
                                      f"{limits.checkpoint_max_bytes}; raise the cap in params.yaml only for a "
                                      "file you trust")
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length > limits.header_max_bytes:
            raise CheckpointTooLargeError(f"{path}: safetensors header of {length} bytes is over "
                                          f"limits.header_max_bytes {limits.header_max_bytes}")
        if length < 2 or 8 + length > size:
            raise CheckpointMismatchError(f"{path}: not a readable safetensors file (header length {length}, "
                                          f"file {size} bytes); checkpoints must be safetensors written by grasp")
        text = fh.read(length)
    total = declared_tensor_bytes(path, text)
    if total > limits.tensor_max_bytes:
        raise CheckpointTooLargeError(f"{path}: header declares {total} tensor bytes, over "
                                      f"limits.tensor_max_bytes {limits.tensor_max_bytes}")


def declared_tensor_bytes(path: Path, text: bytes) -> int:
    """Sum of the tensor byte ranges a safetensors JSON header declares (0 for no tensor)."""
    try:
        entries = json.loads(text)
        spans = [info["data_offsets"] for name, info in entries.items() if name != "__metadata__"]
        return sum(int(end) - int(start) for start, end in spans)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointMismatchError(f"{path}: safetensors header is not valid JSON with data_offsets; "
                                      "checkpoints must be safetensors written by grasp") from None


def check_compatible(path: Path, header: CheckpointHeader, like: CheckpointHeader) -> None:
    """Raise when `header` (read from `path`) differs from `like` in architecture, classes or input."""
    for name in ("arch", "num_classes", "classes", "input_shape"):
        got, want = getattr(header, name), getattr(like, name)
        if got != want:
            raise CheckpointMismatchError(f"{path}: {name} {got!r} does not match target {want!r}")


def load_checkpoint(path: Path, like: CheckpointHeader | None = None, device: torch.device | str | None = None,
                    limits: LimitsConfig = DEFAULT_LIMITS) -> tuple[nn.Module, CheckpointHeader]:
    """Build the model the header names and load its tensors (strict names and shapes, finite values);
    `device`: where the loaded model lives (default: CPU). Caps are checked before any tensor is read."""
    header = read_header(path, limits)
    if like is not None:
        check_compatible(path, header, like)
    model = build_model(header.arch, header.num_classes, header.input_shape)
    with safe_open(str(path), framework="pt") as fh:
        state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
        expected_hash = (fh.metadata() or {})["tensors_sha256"]
    if tensors_sha256(state) != expected_hash:
        raise CheckpointMismatchError(f"{path}: tensor content does not match its header hash (corrupt or edited)")
    load_state(model, state, path)
    return (model if device is None else model.to(device)), header


def load_state(model: nn.Module, state: StateDict, where: Path | str) -> None:
    """Strict load with one-line errors naming the tensor at fault."""
    own = model.state_dict()
    if missing := sorted(set(own) - set(state)):
        raise CheckpointMismatchError(f"{where}: missing tensor '{missing[0]}' ({len(missing)} missing)")
    if unexpected := sorted(set(state) - set(own)):
        raise CheckpointMismatchError(f"{where}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} extra)")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise CheckpointMismatchError(f"{where}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                                          f"the architecture expects {tuple(own[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointMismatchError(f"{where}: tensor '{name}' holds NaN or Inf values")
    model.load_state_dict(state)


def load_weights_file(model: nn.Module, path: Path, limits: LimitsConfig = DEFAULT_LIMITS) -> None:
    """Load user-named weights into `model`: safetensors, or a torch file read with weights_only=True.

    A head whose shape differs (other class count) keeps its fresh initialisation.
    """
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: 'model.weights' file not found")
    if path.suffix == ".safetensors":
        check_sizes(path, limits)
    elif path.stat().st_size > limits.checkpoint_max_bytes:
        raise CheckpointTooLargeError(f"{path}: over limits.checkpoint_max_bytes {limits.checkpoint_max_bytes}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise CheckpointMismatchError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    own = model.state_dict()
    prefixed = {k if k in own else f"net.{k}": v for k, v in state.items()}  # wrapped nets sit under InputAdapter
    kept = {k: v for k, v in prefixed.items() if k in own and v.shape == own[k].shape}
    if not kept:
        raise CheckpointMismatchError(f"{path}: no tensor matches the architecture's names and shapes")
    own.update(kept)
    model.load_state_dict(own)
