"""Source training fanned out on a Dask LocalCluster of 2 workers writes the same checkpoints (hashes) as the
local thread runner for the same seed; runner settings are checked before any work."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flows.runtime.runners import RunnerSpec, parse_runner
from grasp_core.errors import ConfigError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_runner_setting_is_parsed_or_refused_naming_it():
    """($GRASP_RUNNER is read by the CLI only: tests/unit/test_run_options.py.)"""
    assert parse_runner("") == RunnerSpec("local")
    assert parse_runner("dask") == RunnerSpec("dask")
    assert parse_runner("dask=tcp://10.0.0.5:8786") == RunnerSpec("dask", "tcp://10.0.0.5:8786")
    with pytest.raises(ConfigError, match="GRASP_RUNNER = 'spark'"):
        parse_runner("spark")
    with pytest.raises(ConfigError, match="dask=tcp://HOST:8786"):
        parse_runner("dask=10.0.0.5")


def test_dask_local_cluster_trains_the_same_checkpoints_as_local_threads(tmp_path, prefect_harness):
    from flows.pipeline.fanout import train_sources
    from flows.pipeline.workspace import Workspace, ensure_base, layout_classes, materialise_data, resolve_roles
    from flows.runtime.execution import Compute
    from grasp_core.checkpoints import file_sha256
    from grasp_core.config import load_config
    from grasp_core.data import input_shape
    from tests.conftest import TINY_PARAMS

    trained = {}
    for runner in ("local", "dask"):
        root = tmp_path / runner
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, "sources": {"epochs": 2, "batch_size": 32}}))
        if runner == "dask":  # the same data (generation is deterministic, but copying keeps the test honest)
            shutil.copytree(tmp_path / "local" / "data", root / "data")
        cfg, ws = load_config(root / "params.yaml"), Workspace(root)
        domains, _ = materialise_data(cfg, ws)
        classes = layout_classes(cfg, ws)
        _, sources = resolve_roles(cfg, domains)
        base, _ = ensure_base(cfg, ws, classes, input_shape(ws.data(cfg), sources[0], classes))
        # where to compute travels to the workers as a value (no GRASP_DEVICE in their environment)
        results = train_sources(cfg, ws, sources, domains, classes, base, runner, Compute("cpu"))
        assert [fresh for _, fresh in results] == [True] * len(sources)
        trained[runner] = {p.stem: file_sha256(p) for p in sorted(ws.sources.glob("*.safetensors"))}
    assert len(trained["local"]) == 2
    assert trained["dask"] == trained["local"]


def test_workers_of_our_local_cluster_keep_glibc_allocator_defaults():
    """Dask's own LocalCluster gives workers MALLOC_TRIM_THRESHOLD_ (training 2-3x slower, `grasp bench dask`);
    the cluster the runner starts does not, and the warning fires only on the former."""
    import os

    from distributed import LocalCluster

    from flows.runtime.runners import DASK_LOCAL_CLUSTER, RunnerSpec, allocator_warning, fanout_environment

    def worker_env() -> tuple[str | None, str | None]:
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), allocator_warning()

    before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    with LocalCluster(**DASK_LOCAL_CLUSTER) as cluster, cluster.get_client() as client:  # Dask's defaults
        plain = client.submit(worker_env, pure=False).result()
    assert plain[0] == "65536" and plain[1] is not None and "MALLOC_TRIM_THRESHOLD_" in plain[1]
    if before is None:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # Dask's nanny set it in this process too
    with fanout_environment(RunnerSpec("dask")), LocalCluster(**DASK_LOCAL_CLUSTER) as cluster, \
            cluster.get_client() as client:
        ours = client.submit(worker_env, pure=False).result()
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") is None  # nor poisoned in this process
    assert ours == (None, None)
