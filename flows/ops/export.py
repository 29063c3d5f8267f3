"""Deployment formats of a grasp model: write ONNX or TorchScript, load each back as a plain
`logits = run(images)` function on CPU, and measure parity and latency against the PyTorch model.

ONNX goes through torch's TorchScript-based exporter (`dynamo=False`): it needs neither onnxscript nor
torch.export's tracing of the data-dependent resize in `InputAdapter`, and gives a graph ONNX Runtime runs
as is. The batch axis is dynamic, so one file serves batch 1 and batch 32 alike.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grasp_core.errors import GraspError

if TYPE_CHECKING:  # numpy too: `grasp`'s parser imports this module for FORMATS, and every command pays its imports
    import numpy as np
    import torch
    from torch import nn

FORMATS = ("onnx", "torchscript")
RUNTIMES = ("pytorch", *FORMATS)  # what `grasp bench deploy` compares
PARITY_ATOL = 1e-4  # max |logit difference| an export may show against PyTorch on the test split
Runner = Callable[["np.ndarray"], "np.ndarray"]  # (N, C, H, W) float32 -> (N, num_classes) float32
_DEPRECATED = (".*legacy TorchScript-based ONNX export.*", ".*The feature will be removed.*",
               ".*torch.jit.* is deprecated.*")  # torch 2.14 warns on both formats; they still work as documented


class ExportError(GraspError):
    """An export that cannot be written or does not match its PyTorch model."""


@dataclass(frozen=True)
class Parity:
    """How an exported model's logits compare with PyTorch's on the same images."""

    images: int
    max_abs_logit_diff: float
    agreement_frac: float  # share of images whose predicted class is the same

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= PARITY_ATOL and self.agreement_frac == 1.0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _DEPRECATED:
            warnings.filterwarnings("ignore", message=message)
        yield


def write_export(model: nn.Module, input_shape: tuple[int, int, int], fmt: str, out: Path) -> Path:
    """Write `model` (eval mode, CPU) as `fmt` to `out` atomically (a temporary file, then a rename)."""
    import torch

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown export format; choose one of: {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    example = torch.zeros((2, *input_shape))  # (B, C, H, W); batch 2 so no axis of size 1 is specialised
    model = model.eval().cpu()
    try:
        with _quiet(), torch.no_grad():
            if fmt == "onnx":
                batch_axis = {"images": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["images"],
                                  output_names=["logits"], dynamic_axes=batch_axis)
            else:
                torch.jit.trace(model, example).save(str(tmp))
        if fmt == "onnx":
            import onnx

            onnx.checker.check_model(str(tmp))  # a malformed graph fails here, not in a deployment
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def load_runner(fmt: str, path: Path | None = None, model: nn.Module | None = None, threads: int = 0) -> Runner:
    """A CPU function images -> logits for `fmt`: "pytorch" runs `model`; "onnx" and "torchscript" load `path`.

    Args:
        threads: intra-op threads of the runtime (0 = its own default).
    """
    if fmt == "onnx":
        return _onnx_runner(path, threads)  # type: ignore[arg-type]
    import torch

    if threads:
        torch.set_num_threads(threads)
    if fmt == "torchscript":
        with _quiet():  # only files this process family wrote: TorchScript archives are not for untrusted input
            model = torch.jit.load(str(path), map_location="cpu")
    if model is None:
        raise ExportError(f"runtime '{fmt}': nothing to run; choose one of: {', '.join(RUNTIMES)}")
    module = model.eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def _onnx_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images})[0]

    return run


def logits_in_batches(run: Runner, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`run` over `images` (N, C, H, W) in slices of `batch_size`; (N, num_classes)."""
    import numpy as np

    return np.concatenate([run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def parity(reference: np.ndarray, exported: np.ndarray) -> Parity:
    """Compare two (N, num_classes) logit arrays of the same images."""
    import numpy as np

    diff = float(np.abs(reference - exported).max()) if len(reference) else 0.0
    agree = float((reference.argmax(1) == exported.argmax(1)).mean()) if len(reference) else 1.0
    return Parity(images=len(reference), max_abs_logit_diff=diff, agreement_frac=agree)


def latency_ms(run: Runner, images: np.ndarray, iters: int, warmup: int = 5) -> tuple[float, float]:
    """(p50, p95) wall milliseconds of one `run(images)` call, after `warmup` untimed calls."""
    for _ in range(warmup):
        run(images)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(images)
        times.append((time.perf_counter() - start) * 1e3)
    cuts = statistics.quantiles(times, n=20, method="inclusive") if len(times) > 1 else times * 19
    return statistics.median(times), cuts[18]


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A float32, C-contiguous copy for any runtime (ONNX Runtime refuses other layouts and dtypes)."""
    import numpy as np

    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
