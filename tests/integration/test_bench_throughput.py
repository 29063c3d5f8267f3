"""`grasp bench throughput` on a tiny config: rows for both loaders, training and data-only, and the ratios."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli_core import grasp

pytestmark = pytest.mark.integration


def test_throughput_bench_prints_images_per_second(tmp_path, tmp_params):
    params = tmp_params({"data.domains": 2})
    out = grasp("bench", "throughput", "--params", str(params), "--epochs", "2", "--threads", "1", "--workers", "1",
                "--json", "rows.json", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 8 and all(r["images_per_s"] > 0 for r in rows)
    assert {r["loader"] for r in rows} == {
        "train: decoded once (grasp)", "train: decode every epoch (DataLoader, 1 workers)",
        "data-only: decoded once (grasp)", "data-only: decode every epoch (DataLoader, 1 workers)"}
    assert "train: epoch 2+ decoded once" in out.stdout and "data-only: epoch 2+ decoded once" in out.stdout
