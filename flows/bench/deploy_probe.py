"""One fresh process of `grasp bench deploy`: load one model file in one runtime, predict, time it, and print
a JSON line with its latency and the process's peak RSS.

Run as `python -m flows.bench.deploy_probe FORMAT FILE IMAGES.npy ITERS THREADS`. It imports only what its runtime
needs (the ONNX probe never imports torch), so the peak RSS is what a deployment of that format would pay.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy too: `grasp bench deploy`'s parser reads BATCHES from here, and `grasp` imports it
    import numpy as np

    from flows.ops.export import Runner

BATCHES = (1, 32)


def _load(fmt: str, path: Path, threads: int) -> Runner:
    from flows.ops.export import load_runner

    if fmt == "pytorch":  # the safetensors checkpoint through grasp_core's checked loader, as serving does
        from grasp_core.checkpoints import load_checkpoint

        model, _ = load_checkpoint(path)
        return load_runner("pytorch", model=model, threads=threads)
    return load_runner(fmt, path, threads=threads)


def own_peak_rss_bytes() -> int:
    """This process image's peak RSS: VmHWM on Linux, else ru_maxrss (bytes on macOS).

    Not ru_maxrss on Linux: it carries the parent's high-water mark across fork and exec (flows/bench/memory.py
    measures its workers the same way), and this module stays free of torch so the ONNX probe pays none.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def probe(fmt: str, path: Path, images: np.ndarray, iters: int, threads: int) -> dict[str, float]:
    """Load, then p50/p95 milliseconds at each batch size in BATCHES, then the peak RSS (bytes) so far."""
    from flows.ops.export import latency_ms

    start = time.perf_counter()
    run = _load(fmt, path, threads)
    out: dict[str, float] = {"load_s": time.perf_counter() - start}
    for batch in BATCHES:
        out[f"p50_ms_b{batch}"], out[f"p95_ms_b{batch}"] = latency_ms(run, images[:batch], iters)
    out["peak_rss_bytes"] = own_peak_rss_bytes()
    return out


def main(argv: list[str]) -> int:
    import numpy as np

    fmt, path, images, iters, threads = argv
    batch = np.load(images)  # (N >= 32, C, H, W) float32
    print(json.dumps(probe(fmt, Path(path), batch, int(iters), int(threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
