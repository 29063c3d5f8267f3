"""Where independent work runs: the flow's fan-outs on threads of this process, or on Dask.

A where/how knob, so a CLI flag (`--runner`) or the environment (`GRASP_RUNNER`), never params.yaml:

    local               threads of this process (default)
    dask                a local Dask cluster started for the run: 2 worker processes x 1 thread
    dask=tcp://HOST:PORT   an existing Dask scheduler

Only independent work fans out (source training; targets of `--all-targets`). The merge is sequential
by design and stays in the flow's process. Source training pins one torch thread wherever it runs
(grasp_core/threads.py), so every runner writes byte-identical checkpoints for the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from grasp_core.errors import ConfigError

ENV = "GRASP_RUNNER"  # named in messages; read by flows/runtime/options.py only
LOCAL_WORKERS = 2  # sources trained at once on threads (2 cores: more only contend)
DASK_LOCAL_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ). Any value
# of it turns off glibc's dynamic mmap threshold: every tensor over 128 KiB is then mmap'd and unmapped again on
# free, and source training ran 2-3x slower in a worker than in a plain process (`grasp bench dask`). Workers of
# the clusters this tool starts keep glibc's defaults, as the sequential runner has; None unsets the variable
# (and keeps the nanny from setting it in this process too). Their statistical profiler (a stack walk of every
# thread each 10 ms, holding the GIL, for a dashboard these clusters do not serve) is off as well.
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                       "distributed.worker.profile.enabled": False}


@dataclass(frozen=True)
class RunnerSpec:
    kind: str  # "local" | "dask"
    address: str = ""  # Dask scheduler address; "" = start a local cluster

    def describe(self) -> str:
        if self.kind == "local":
            return f"local threads (x{LOCAL_WORKERS})"
        return f"Dask scheduler {self.address}" if self.address else \
            f"local Dask cluster ({DASK_LOCAL_CLUSTER['n_workers']} workers x 1 thread)"


def parse_runner(text: str) -> RunnerSpec:
    """`--runner` / $GRASP_RUNNER (RunOptions.runner) -> RunnerSpec; unknown values are a one-line error naming
    the setting."""
    value = text.strip() or "local"
    if value == "local":
        return RunnerSpec("local")
    if value == "dask":
        return RunnerSpec("dask")
    if value.startswith("dask="):
        address = value.removeprefix("dask=")
        if "://" not in address:
            raise ConfigError(f"--runner / ${ENV} = '{value}': a Dask address looks like dask=tcp://HOST:8786")
        return RunnerSpec("dask", address)
    raise ConfigError(f"--runner / ${ENV} = '{value}' is not one of: local, dask, dask=tcp://HOST:PORT")


@contextmanager
def api_url_exported() -> Iterator[None]:
    """$PREFECT_API_URL set to this process's configured API while the block runs (Dask workers it spawns
    inherit it), then restored."""
    before = os.environ.get("PREFECT_API_URL")
    expose_api_url()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


@contextmanager
def fanout_environment(spec: RunnerSpec) -> Iterator[None]:
    """Around a fan-out on `spec`: this run's Prefect API exported to worker processes and, for a Dask cluster
    started here, workers with glibc's allocator defaults (LOCAL_WORKER_CONFIG)."""
    with api_url_exported():
        if spec.kind == "local" or spec.address:
            yield
            return
        import dask
        import distributed  # noqa: F401  (loads Dask's distributed defaults, which the block overrides)

        with dask.config.set(LOCAL_WORKER_CONFIG):
            yield


def allocator_warning() -> str | None:
    """A line for the log when this process runs with MALLOC_TRIM_THRESHOLD_ set and no MALLOC_MMAP_THRESHOLD_:
    the default of workers of an existing Dask cluster, which slows training 2-3x (LOCAL_WORKER_CONFIG)."""
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if value is None or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return None
    return (f"this worker runs with MALLOC_TRIM_THRESHOLD_={value} (Dask's default for its workers), which turns "
            "off glibc's dynamic mmap threshold: training runs 2-3x slower. Start the workers with the Dask setting "
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_ set to null (docs/scale-out.md)")


def warn_on_slow_allocator() -> None:
    """Log allocator_warning() as a warning of the running task, if there is one."""
    line = allocator_warning()
    if line:
        from prefect import get_run_logger

        get_run_logger().warning(line)


def expose_api_url() -> None:
    """Worker processes must report task runs to this run's Prefect API: export its URL to them."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url  # None in Prefect's ephemeral mode: `grasp run` starts a server for Dask
    if url:
        os.environ["PREFECT_API_URL"] = url


def task_runner(spec: RunnerSpec) -> Any:
    """A Prefect task runner for the fan-outs; run it inside `fanout_environment(spec)`."""
    if spec.kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=LOCAL_WORKERS)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:  # pragma: no cover - prefect-dask is a dependency
        raise ConfigError(f"--runner dask needs prefect-dask ({err})") from None
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=dict(DASK_LOCAL_CLUSTER))
