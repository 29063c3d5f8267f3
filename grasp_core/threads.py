"""Torch intra-op threads pinned for a block: results must not depend on the machine's core count.

Float sums split across threads round differently, so a source trained with 1 thread differs (~1e-3)
from one trained with 2. Source training pins one thread everywhere: in the sequential core run, in the
flow's thread pool (two sources at once) and in Dask worker processes, so every runner writes
byte-identical checkpoints for the same seed. With torch's OpenMP backend the count belongs to the
calling thread (measured: a worker thread's `set_num_threads(1)` leaves the main thread at 2), so the
block sets and restores it for its own thread only and concurrent blocks do not disturb each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SOURCE_TRAINING_THREADS = 1


@contextmanager
def pinned_threads(n: int = SOURCE_TRAINING_THREADS) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(n)` in the calling thread, then restore its count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
