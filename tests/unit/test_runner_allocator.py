"""The allocator warning a Dask worker gives when it runs with Dask's MALLOC_TRIM_THRESHOLD_, and the settings
the clusters this tool starts give their workers instead."""

from __future__ import annotations

from flows.runtime.runners import LOCAL_WORKER_CONFIG, RunnerSpec, allocator_warning, fanout_environment


def test_no_warning_with_glibc_defaults(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert allocator_warning() is None


def test_warning_names_the_variable_and_the_dask_setting(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    line = allocator_warning()
    assert line is not None
    assert "MALLOC_TRIM_THRESHOLD_=65536" in line
    assert "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_" in line


def test_no_warning_when_the_mmap_threshold_is_set_too(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    assert allocator_warning() is None


def test_local_cluster_settings_apply_only_inside_the_fanout():
    import dask
    import distributed  # noqa: F401  (its defaults)

    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    assert dask.config.get(key) == 65536  # Dask's default, which the test below must override
    with fanout_environment(RunnerSpec("dask")):
        assert all(dask.config.get(k) == v for k, v in LOCAL_WORKER_CONFIG.items())
    assert dask.config.get(key) == 65536
    with fanout_environment(RunnerSpec("dask", "tcp://10.0.0.5:8786")):  # someone else's workers: untouched
        assert dask.config.get(key) == 65536
