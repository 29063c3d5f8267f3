"""Human progress on stderr: what is running, epoch by epoch, with elapsed time; inside a Prefect flow also
through Prefect's run logger, so the Prefect UI shows each stage of a run (scheduled runs included)."""

from __future__ import annotations

import sys
import time

from grasp_core.grasp import StepResult


class Progress:
    """Prints one line per event unless quiet; `verbose` adds every epoch. With `run_log`, each line also goes
    to the run logger of the Prefect flow or task run it is said in (quiet or not)."""

    def __init__(self, quiet: bool = False, verbose: bool = False, run_log: bool = False) -> None:
        self.quiet, self.verbose, self.label, self.t0 = quiet, verbose, "", time.perf_counter()
        self.run_log = run_log

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)
        if self.run_log:
            run_log(message)

    def stage(self, label: str) -> None:
        self.label = label

    def epoch(self, epoch: int, epochs: int, val_accuracy: float) -> None:
        if self.verbose or epoch == epochs:
            self.say(f"{self.label}: epoch {epoch}/{epochs} val {val_accuracy:.3f}")

    def step(self, result: StepResult) -> None:
        moved = f", transferred {len(result.transferred)}/{len(result.scores)} tensors" if result.scores else ""
        self.say(f"grasp stage {result.stage} [{result.source_name}]{moved}: val {result.val_accuracy:.3f} "
                 f"test {result.test_accuracy:.3f} ({result.wall_s:.1f}s)")
        self.label = f"grasp stage {result.stage + 1}"


def run_log(message: str) -> None:
    """`message` at INFO through Prefect's run logger; outside a flow or task run, nothing. The record carries
    `grasp_progress` so the terminal does not print it twice (flows.runtime.settings.route_run_logs)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger(grasp_progress=True).info(message)
    except MissingContextError:
        pass


def link_mlflow_run(tracking_uri: str, experiment_id: str, run_id: str) -> None:
    """A Prefect artifact on the current flow run that points at its MLflow parent run: a link when the store
    is an MLflow server, else a note with the store and the `mlflow ui` command that opens the run."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    where = f"#/experiments/{experiment_id}/runs/{run_id}"
    description = "The MLflow parent run of this flow run (its stages, metrics, registered versions)"
    if tracking_uri.startswith(("http://", "https://")):
        create_link_artifact(link=f"{tracking_uri.rstrip('/')}/{where}", link_text=f"MLflow run {run_id}",
                             key="mlflow-parent-run", description=description)
        return
    create_markdown_artifact(
        markdown=f"MLflow parent run `{run_id}` (experiment {experiment_id}) in `{tracking_uri}`.\n\n"
                 f"Open it with `mlflow ui --backend-store-uri {tracking_uri}`, then `{where}`.",
        key="mlflow-parent-run", description=description)
