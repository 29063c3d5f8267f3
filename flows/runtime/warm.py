"""One-off imports a cold `grasp run` would pay inside its flow, paid instead while Prefect's server boots.

On a new workspace the server's boot (its import and database migrations, ~15 s of one core) outlasts the
run's own imports by several seconds, during which the run's process would only wait. Each step here is an
import the flow makes anyway, through public APIs; none does any of the flow's work (no task moves out of
Prefect). The steps run only while the server is still booting, so a warm start never waits for them.
"""

from __future__ import annotations

from collections.abc import Callable


def _optimizer() -> None:
    """The first torch optimizer of a process imports torch's compiler stack (~2-3 s): base training's, else."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _mlflow_store() -> None:
    """The SQL store every run opens (`open-tracking`), and its migrations' modules."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _digits() -> None:
    """scikit-learn's digits, which the embedded benchmark is drawn from (a cold run writes it)."""
    import sklearn.datasets  # noqa: F401


def _plots() -> None:
    """matplotlib's Figure, for the run's lineage plot and HTML report."""
    import matplotlib.figure  # noqa: F401


WARM_STEPS: tuple[Callable[[], None], ...] = (_optimizer, _mlflow_store, _digits, _plots)


def warm_while(booting: Callable[[], bool], steps: tuple[Callable[[], None], ...] = WARM_STEPS) -> list[str]:
    """Run `steps` in order while `booting()` is true; returns the names of those run.

    Best effort: a step that fails is skipped (the flow then pays, or reports, the same import itself).
    """
    done: list[str] = []
    for step in steps:
        if not booting():
            break
        try:
            step()
        except Exception:  # noqa: BLE001 - a warm-up never fails a run; the flow meets the same error itself
            continue
        done.append(step.__name__.lstrip("_"))
    return done
