"""MLflow 3 tracking and registry: one parent run per pipeline run, one nested run per step, and registered
versions whose weights are a safetensors artifact (never a pickle). Aliases only, never stages.

mlflow (about 1-2.5 s to import) and torch load on first use, so importing this module stays cheap.
Metric keys are `<split>/<metric>` or `<group>/<metric>`; param keys are dotted params.yaml paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypedDict

from flows.stores.stage_runs import log_batch
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from grasp_core.checkpoints import CheckpointHeader


_QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_MLFLOW_NOISE = (  # warnings mlflow's own code triggers, harmless for us
    ".*noload.*",  # sqlalchemy 2.1 SADeprecationWarning on every SQL-store query (research/stack.md)
    ".*Any type hint is inferred as AnyType.*",  # importing mlflow.pyfunc (its own chat types)
    ".*'str' dtypes are included by select_dtypes.*",  # pandas 3 inside MlflowClient.log_table
)
log = logging.getLogger(__name__)


OWNER_PID, OWNER_STARTED, OWNER_HOST = "grasp.owner_pid", "grasp.owner_pid_started", "grasp.owner_host"


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's global tracking URI for one block, then the previous one again; $MLFLOW_TRACKING_URI (which
    mlflow sets with it) too, so it never leaks into later Trackers or subprocesses of this process. The
    registry URI is left unset: every client then reads the registry of its own tracking URI."""
    mlflow = _mlflow()
    env, previous = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _owner_tags() -> dict[str, str]:
    """Which process runs a pipeline run: lets the next run end the MLflow runs of a killed one."""
    import socket

    from flows.runtime.lock import process_started

    started = process_started(os.getpid())
    return {OWNER_PID: str(os.getpid()), OWNER_STARTED: "" if started is None else repr(started),
            OWNER_HOST: socket.gethostname()}


class TrackingError(GraspError):
    """A model URI, alias or tracking store that the user named does not exist."""


class VersionRecord(TypedDict):
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: list[str]


def _mlflow() -> ModuleType:
    """Import mlflow with telemetry, progress bars and INFO logs off (env vars must precede the import)."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for noise in _MLFLOW_NOISE:
        warnings.filterwarnings("ignore", message=noise)
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow


def resolve_tracking_uri(workspace: Path, tracking_uri: str | None = None) -> str:
    """The argument, else $MLFLOW_TRACKING_URI, else `sqlite:///<workspace>/mlflow.db` (absolute)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace.resolve() / 'mlflow.db'}"


def _check_sqlite_store(uri: str) -> None:
    """A corrupt SQLite store fails as one line and the way out, not a SQLAlchemy traceback."""
    if uri.startswith("sqlite:///"):
        from flows.stores.health import MLFLOW_RECOVERY, check_sqlite

        check_sqlite(Path(uri.removeprefix("sqlite:///")), MLFLOW_RECOVERY)


def _is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def _client(tracking_uri: str) -> MlflowClient:
    return _mlflow().MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def flatten_params(params: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """Nested or dotted params -> dotted keys with string values, cut to MLflow's value length limit."""
    _mlflow()
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # 6000 chars in 3.17.2 (500 in old releases)

    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{prefix}{key}."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            log.warning("param '%s%s' has %d chars; logged truncated (params.yaml has it whole)", prefix, key,
                        len(text))
            text = text[: MAX_PARAM_VAL_LENGTH - 14] + "...[truncated]"
        out[prefix + key] = text
    return out


class Tracker:
    """Runs, artifacts and the model registry of one MLflow experiment (created on first use)."""

    def __init__(self, workspace: Path, experiment: str = "grasp", tracking_uri: str | None = None) -> None:
        self.workspace = workspace.resolve()
        self.tracking_uri = resolve_tracking_uri(self.workspace, tracking_uri)
        _check_sqlite_store(self.tracking_uri)
        self.client = _client(self.tracking_uri)
        self.experiment_id = self._experiment(experiment)
        # where this experiment's artifacts go (a folder for the default local store), named in errors
        self.artifact_root: str = self.client.get_experiment(self.experiment_id).artifact_location
        self._parent_run_id: str | None = None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        # without artifact_location, artifacts land in ./mlruns under whatever the cwd is
        location = None if _is_remote(self.tracking_uri) else (self.workspace / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except _mlflow().MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process created it first
                raise
            found = self.client.get_experiment_by_name(name)
            if found is None:  # created and deleted again meanwhile: the original error stands
                raise
            return found.experiment_id

    def start_warm_up(self) -> threading.Thread:
        """`warm_up` in a thread of its own; returns it (started). The flow calls this once the store is
        open: the merge plan and the first stage need the store, not the warm-up (~1.3 s measured, more on a
        busy machine), and a registration that comes first simply pays the rest under Python's import lock.
        Not a daemon: a run that fails early waits for it at exit instead of ending inside an import."""
        thread = threading.Thread(target=self.warm_up, name="grasp-mlflow-warm-up")
        thread.start()
        return thread

    def warm_up(self) -> None:
        """Pay `register`'s one-off import of mlflow.pyfunc now. Best effort: a failure here only means the
        first `register` pays (and reports it)."""
        try:
            _mlflow()
            import mlflow.pyfunc  # noqa: F401
        except Exception as err:
            log.debug("MLflow warm-up skipped: %s", err)

    @contextlib.contextmanager
    def parent_run(self, run_name: str, params: Mapping[str, object], tags: Mapping[str, str],
                   params_file: Path | None = None) -> Iterator[str]:
        """One run per pipeline run; yields its id. An exception inside the block ends it FAILED.

        Args:
            params: the resolved config, flattened to dotted params.yaml keys (nested mappings are flattened).
            params_file: params.yaml itself, logged as an artifact.
        """
        run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        previous, self._parent_run_id = self._parent_run_id, run_id
        try:
            from flows.runtime.faults import transient_faults

            with transient_faults(f"MLflow store {self.tracking_uri} (artifacts {self.artifact_root})"):
                log_batch(self.client, run_id, {}, flatten_params(params), {**tags, **_owner_tags()})
                if params_file is not None:
                    self.client.log_artifact(run_id, str(params_file))
            yield run_id
        except BaseException as err:
            # an interruption (KeyboardInterrupt, SystemExit, Prefect's SIGTERM signal) ends the run KILLED
            self.client.set_terminated(run_id, "FAILED" if isinstance(err, Exception) else "KILLED")
            raise
        else:
            self.client.set_terminated(run_id, "FINISHED")
        finally:
            self._parent_run_id = previous

    def step_run(self, run_name: str, metrics: Mapping[str, float], params: Mapping[str, object],
                 tags: Mapping[str, str], artifacts: Mapping[str, Path] | None = None,
                 tables: Mapping[str, list[dict]] | None = None, figures: Mapping[str, Figure] | None = None,
                 parent_run_id: str | None = None, history: Mapping[str, list[float]] | None = None,
                 inputs: list | None = None) -> str:
        """Log one finished step as a run nested under `parent_run_id` (default: the open `parent_run`).

        A retry (same parent, same `run_name`) logs into the run the failed attempt created instead of a new one.

        Args:
            artifacts: artifact folder ("" for the run's root) -> local file or folder to copy there.
            tables: name -> rows, logged as `tables/<name>.json` (MLflow table format).
            figures: name -> matplotlib figure, logged as `figures/<name>.png`.
            history: metric key -> one value per epoch, logged at steps 1, 2, ... (a curve in the MLflow UI).
            inputs: mlflow.entities.DatasetInput rows (flows.stores.stage_runs.dataset_input).

        Returns:
            The run id; the run ends FAILED (and the error propagates) if any logging fails.
        """
        from flows.stores.stage_runs import child_run, history_metrics

        parent = parent_run_id or self._parent_run_id
        if parent is None:
            raise TrackingError(f"step run '{run_name}': no parent run; call it inside Tracker.parent_run(...) "
                                "or pass parent_run_id")
        run_id, fresh = child_run(self.client, self.experiment_id, parent, run_name, _owner_tags())
        try:
            if fresh:  # a retried attempt's metrics are already there: logging them again would double each curve
                log_batch(self.client, run_id, metrics, {}, {})
                for i in range(0, len(rows := history_metrics(history or {})), 1000):
                    self.client.log_batch(run_id, metrics=rows[i: i + 1000])
                if inputs:
                    self.client.log_inputs(run_id, datasets=inputs)
            log_batch(self.client, run_id, {}, flatten_params(params), tags)
            for folder, path in (artifacts or {}).items():
                log_path = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
                log_path(run_id, str(path), folder or None)
            for name, rows in (tables or {}).items():
                import pandas as pd

                self.client.log_table(run_id, pd.DataFrame(rows), f"tables/{name}.json")
            for name, figure in (figures or {}).items():
                self.client.log_figure(run_id, figure, f"figures/{name}.png")
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str] | None = None) -> None:
        """Add metrics (and tags) to an existing run, e.g. the final figures of a pipeline run."""
        log_batch(self.client, run_id, metrics, {}, tags or {})

    def register(self, checkpoint: Path, model_name: str, run_id: str, tags: Mapping[str, str],
                 description: str = "") -> str:
        """Log `checkpoint` as a pyfunc model of `run_id` (code + safetensors, no pickle), then register it.

        Registration is the last act: a failure before it leaves no version. The version carries `tags` plus
        `checkpoint_sha256`. The first call in a process costs ~2.5 s more (MLflow scans every installed
        distribution once to check `pip_requirements`); later calls take ~0.1 s.

        A retry re-uses what a failed attempt left: the version of `run_id` if it was registered, else its
        LoggedModel still pending.

        Returns:
            The version number.
        """
        from flows.stores.stage_runs import pending_logged_model, version_of_run
        from grasp_core.checkpoints import file_sha256, read_header

        header = read_header(checkpoint)  # refuses a foreign or corrupt file before anything is logged
        if (done := version_of_run(self.client, model_name, run_id)) is not None:
            return done
        version_tags = {**{k: str(v) for k, v in tags.items()}, "checkpoint_sha256": file_sha256(checkpoint)}
        experiment_id = self.client.get_run(run_id).info.experiment_id
        logged = pending_logged_model(self.client, experiment_id, run_id) or self.client.create_logged_model(
            experiment_id, name="model", source_run_id=run_id)
        # Model.log, and the SQL registry resolving a models:/ source, read mlflow's global URI (and mlflow
        # exports it as $MLFLOW_TRACKING_URI): point it here for this call only, so it never leaks into later
        # Trackers or subprocesses of this process
        with _global_tracking_uri(self.tracking_uri):
            version = self._log_and_register(checkpoint, header, model_name, run_id, version_tags, logged.model_id,
                                             description)
        return str(version.version)

    def _log_and_register(self, checkpoint: Path, header: CheckpointHeader, model_name: str, run_id: str,
                          version_tags: dict[str, str], model_id: str, description: str = "") -> ModelVersion:
        # a failure leaves the LoggedModel PENDING: the task's retry logs into it (flows.stores.stage_runs)
        self._log_pyfunc(checkpoint, header, model_id)
        from mlflow.entities import LoggedModelOutput

        self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        try:
            self.client.create_registered_model(model_name)
        except _mlflow().MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # a models:/<model_id> source links the version to its LoggedModel in the UI, as mlflow.register_model does
        version = self.client.create_model_version(model_name, source=f"models:/{model_id}", run_id=run_id,
                                                   tags=version_tags, model_id=model_id,
                                                   description=description or None)
        return version

    def _log_pyfunc(self, checkpoint: Path, header: CheckpointHeader, model_id: str) -> None:
        from flows.stores.model_package import pyfunc_kwargs

        with tempfile.TemporaryDirectory() as scratch:  # the self-contained model (flows/stores/model_package.py)
            kwargs = pyfunc_kwargs(checkpoint, header, Path(scratch))
            _mlflow().pyfunc.log_model(name="model", model_id=model_id, **kwargs)
        # MLflow checks the input example by loading the model from its code file, whose `set_model` call leaves
        # that instance, network loaded, as MLflow's current code model: a third model alive beside the next
        # stage. Setting a no-op callable in its place releases it.
        _mlflow().models.set_model(_released)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point `alias` (e.g. `champion`, `challenger`) at `version`, moving it if it pointed elsewhere."""
        self.client.set_registered_model_alias(model_name, alias, str(version))

    def get_alias_version(self, model_name: str, alias: str) -> str | None:
        """The version `alias` points at, or None when the alias or the model does not exist."""
        return self._aliases(model_name).get(alias)

    def _aliases(self, model_name: str) -> dict[str, str]:
        try:
            model = self.client.get_registered_model(model_name)
        except _mlflow().MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return {}
        return {alias: str(version) for alias, version in model.aliases.items()}

    def dead_runs(self) -> list[str]:
        """The RUNNING runs of this experiment whose owning process died (a SIGKILLed run cannot end its own
        runs); read-only. Runs of live processes or of other hosts are left out."""
        from flows.runtime.lock import is_owner_alive

        dead = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if OWNER_PID not in tags:
                continue
            owner = {"pid": tags[OWNER_PID], "pid_started": tags.get(OWNER_STARTED) or None,
                     "hostname": tags.get(OWNER_HOST)}
            if not is_owner_alive(owner):
                dead.append(run.info.run_id)
        return dead

    def end_dead_runs(self) -> list[str]:
        """Mark the `dead_runs` KILLED; returns their ids."""
        ended = self.dead_runs()
        for run_id in ended:
            self.client.set_terminated(run_id, "KILLED")
        return ended

    def run_states(self) -> dict[str, tuple[str, str]]:
        """run id -> (status, parent run id or "") for every run of this experiment."""
        runs = self.client.search_runs([self.experiment_id], "", max_results=50000)
        return {r.info.run_id: (r.info.status, r.data.tags.get("mlflow.parentRunId", "")) for r in runs}

    def versions(self, model_name: str) -> list[VersionRecord]:
        """Every version of `model_name`, oldest first, with tags and aliases (empty list if none)."""
        # search_model_versions leaves `aliases` empty on SQL stores: read them from the registered model
        by_version: dict[str, list[str]] = {}
        for alias, version in self._aliases(model_name).items():
            by_version.setdefault(version, []).append(alias)
        found = self.client.search_model_versions(f"name='{model_name}'")
        return [VersionRecord(version=str(v.version), run_id=v.run_id or "", tags=dict(v.tags),
                              aliases=sorted(by_version.get(str(v.version), [])))
                for v in sorted(found, key=lambda v: int(v.version))]


def _released(model_input: object) -> None:
    """Stands in as MLflow's current code model once a registration is logged (see `Tracker._log_pyfunc`)."""
