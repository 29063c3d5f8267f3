"""`grasp bench dask` on a tiny config: every runner (sequential, threads, Dask through Prefect, bare Dask) writes
the same checkpoints in every round, and the figures and ratios are printed and written."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli_core import grasp

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dask_bench_prints_every_runner_with_identical_checkpoints(tmp_path, tmp_params):
    params = tmp_params({"data.domains": 3, "sources.epochs": 1})
    out = grasp("bench", "dask", "--params", str(params), "--repeat", "2", "--json", "dask.json", "--quiet",
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = json.loads((tmp_path / "dask.json").read_text())[0]
    assert row["identical_checkpoints"] is True and row["runs"] == 2 and row["sources"] == 2
    for key in ("sequential", "threads", "dask_train", "dask_bare", "dask_start"):
        low, high = row[f"{key}_range_s"]
        assert 0 < low <= row[f"{key}_s"] <= high
    assert row["dask_vs_sequential"] == pytest.approx(row["dask_train_s"] / row["sequential_s"])
    assert "median of 2 rounds" in out.stdout and "without Prefect" in out.stdout
    assert "identical checkpoints on every runner and round: True" in out.stdout
