"""Scheduled runs: a local Prefect server as a background service, and `grasp_run_flow` served on a schedule.

Prefect's ephemeral API cannot schedule ("Cannot schedule flows on an ephemeral server"), so a schedule needs
a real `prefect server start`. The server runs in its own session (so a Ctrl-C in the terminal does not reach
it) and is recorded in `<ws>/.grasp/prefect-server.json`; a later call re-uses it while it is healthy. Only the
call that started a server stops it. `grasp run` talks to that same server while one is up (`workspace_api`),
so two servers never share the workspace's Prefect database; otherwise it starts one of its own
(flows/ops/prefect_server.py).
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.ops.prefect_server import ServerHandle, ensure_prefect_server
from flows.runtime.execution import AUTO, Compute
from grasp_core.errors import ConfigError


def flow_parameters(ws: Path, params: Path, auto_promote: bool, tracking_uri: str | None,
                    dvc_remote: str | None = None, baselines: bool = False,
                    lock_wait_s: float = 900.0, compute: Compute = AUTO) -> dict[str, Any]:
    """The parameters a served run passes to `grasp_run_flow` (absolute paths: runs start in another folder;
    the device and AMP choice as values: a served run reads no GRASP_* variable).

    A scheduled run that finds the workspace held waits up to `lock_wait_s` for it (logged), instead of
    failing and losing that tick."""
    from flows.pipeline.run import grasp_run_flow

    values: dict[str, Any] = {"params_path": str(Path(params).resolve()), "workdir": str(Path(ws).resolve()),
                              "tracking_uri": tracking_uri, "dvc_remote": dvc_remote, "baselines": baselines,
                              "quiet": False, "verbose": False, "lock_wait_s": lock_wait_s,
                              "device": compute.device, "amp": compute.amp}
    if "auto_promote" in inspect.signature(grasp_run_flow.fn).parameters:
        values["auto_promote"] = auto_promote
    elif auto_promote:
        raise ConfigError("auto_promote: this version of the grasp-run flow has no auto_promote parameter; "
                          "drop the option or update grasp")
    return values


def check_schedule(cron: str | None, interval_s: int | None) -> None:
    """Exactly one of a valid cron string or a positive interval."""
    from prefect.client.schemas.schedules import CronSchedule

    if (cron is None) == (interval_s is None):
        raise ConfigError(f"schedule: give exactly one of a cron string or an interval, got cron={cron!r} and "
                          f"interval_s={interval_s!r}")
    if interval_s is not None and interval_s <= 0:
        raise ConfigError(f"schedule: interval_s = {interval_s} must be a positive number of seconds")
    if cron is not None:
        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise ConfigError(f"schedule: {cron!r} is not a valid cron string; "
                              "e.g. '0 3 * * *' (03:00 daily)") from None


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit until Prefect's runner installs its own (graceful) SIGTERM handler,
    so a stop during start-up still runs our `finally` and no server is orphaned."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_pipeline(ws: Path, params: Path, cron: str | None = None, interval_s: int | None = None,
                   auto_promote: bool = False, tracking_uri: str | None = None,
                   deployment_name: str = "grasp-scheduled", dvc_remote: str | None = None,
                   baselines: bool = False, lock_wait_s: float = 900.0, compute: Compute = AUTO) -> None:
    """Serve `grasp_run_flow` as deployment `grasp-run/<deployment_name>` on a schedule, until SIGTERM or Ctrl-C.

    Runs execute one at a time in child processes of this one. On exit the deployment is paused and a server
    this call started is stopped.
    """
    from grasp_core.config import load_config

    check_schedule(cron, interval_s)
    load_config(Path(params))  # a bad params.yaml fails now, not at the first scheduled run
    parameters = flow_parameters(ws, params, auto_promote, tracking_uri, dvc_remote, baselines, lock_wait_s, compute)
    server: ServerHandle | None = None
    with _terminate_as_exit():
        try:
            server = ensure_prefect_server(ws)
            _serve(server, deployment_name, cron, interval_s, parameters)
        finally:
            if server is not None:
                server.stop()


def _serve(server: ServerHandle, name: str, cron: str | None, interval_s: int | None,
           parameters: dict[str, Any]) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline.run import grasp_run_flow

    every = f"cron '{cron}'" if cron else f"every {interval_s} s"
    print(f"serving deployment 'grasp-run/{name}' ({every}) on {server.url}\n"
          f"Prefect UI: {server.ui_url}/deployments  |  stop with Ctrl-C or SIGTERM", flush=True)
    with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_UI_URL: server.ui_url}):
        # MODULE_PATH: runs import flows.pipeline.run by name, so they work whatever the current folder is.
        grasp_run_flow.serve(name=name, cron=cron, interval=interval_s, parameters=parameters, limit=1,
                             pause_on_shutdown=True, print_starting_message=False,
                             entrypoint_type=EntrypointType.MODULE_PATH)


def deployment_snippet(deployment_name: str = "grasp-nightly", pool: str = "grasp-pool",
                       cron: str = "0 3 * * *") -> str:
    """docs/operations.md: the same schedule on a long-lived Prefect server with a process work pool and a worker."""
    return f"""\
### Scheduled runs on your own Prefect server

`grasp schedule` serves the flow from one process, with a local server it starts itself. To run it on a
long-lived Prefect server with a work pool instead:

```bash
export PREFECT_API_URL=http://<prefect-host>:4200/api         # or: prefect server start  (UI on :4200)
prefect work-pool create {pool} --type process
python - <<'PY'
from prefect.types.entrypoint import EntrypointType
from flows.pipeline.run import grasp_run_flow
grasp_run_flow.deploy(
    name="{deployment_name}", work_pool_name="{pool}", cron="{cron}",
    parameters={{"params_path": "/srv/grasp/params.yaml", "workdir": "/srv/grasp",
                "tracking_uri": "http://<mlflow-host>:5000"}},
    entrypoint_type=EntrypointType.MODULE_PATH,  # the worker imports the installed grasp: no image, no storage
)
PY
prefect worker start --pool {pool}   # on the machine that holds the workspace; runs each scheduled flow
```
`prefect deployment run 'grasp-run/{deployment_name}'` starts one run now. `cron` is in UTC; for local time pass
`schedules=[prefect.schedules.Cron("{cron}", timezone="Europe/Paris")]` instead. Stop the worker before the
server. To have the worker pull the code
from git instead of importing an installed grasp: `prefect.flow.from_source(source="https://github.com/<org>/grasp.git",
entrypoint="flows/pipeline/run.py:grasp_run_flow").deploy(name=..., work_pool_name=..., cron=..., parameters=...)`.
"""
