"""The memory and cost benches and the run report, end to end on the tiny config (real processes, real MLflow)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import TINY_PARAMS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "params.yaml"
    path.write_text(yaml.safe_dump(TINY_PARAMS))
    return path


@pytest.fixture(scope="module")
def cost(tiny_params: Path):
    """The cost bench on the tiny config, its workspace kept for the report test."""
    from flows.bench.cost import cost_bench

    t0 = time.perf_counter()
    bench = cost_bench(tiny_params, say=lambda _: None, keep=True)
    bench["wall_s"] = time.perf_counter() - t0
    yield bench
    shutil.rmtree(bench["info"]["workspace"], ignore_errors=True)


def test_memory_bench_cli_counts_models_per_k(tiny_params: Path, tmp_path: Path) -> None:
    from flows.bench.memory import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="bench"))
    out, png = tmp_path / "memory.json", tmp_path / "memory.png"
    args = parser.parse_args(["memory", "--params", str(tiny_params), "--ks", "2,4", "--arch", "small_cnn",
                              "--json", str(out), "--plot", str(png), "--quiet"])
    assert args.handler(args) == 0
    rows = json.loads(out.read_text())
    assert {(r["method"], r["k"]) for r in rows} == {(m, k) for m in ("grasp", "fusion", "ensemble") for k in (2, 4)}
    for row in rows:
        assert {"method", "k", "peak_rss_mb", "peak_model_bytes", "models_alive", "param_sized_multiple"} <= set(row)
        assert row["peak_rss_mb"] > 0 and row["peak_model_bytes"] > 0
        if row["method"] == "ensemble":
            assert row["models_alive"] == row["k"]
        else:
            assert row["models_alive"] <= 2
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_memory_bench_default_invocation_runs_on_its_default_arch(tmp_path: Path, monkeypatch) -> None:
    """`grasp bench memory` as a user types it (default arch bench_mlp, default params.yaml, default methods'
    code path), with one documented size override: `--ks 2,3 --methods grasp` instead of 2..32 x 3 methods,
    which take minutes. The default K list and methods are checked to be what the parser hands on."""
    from flows.bench.memory import BENCH_ARCH, DEFAULT_KS, DEFAULT_METHODS, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="bench"))
    defaults = parser.parse_args(["memory"])
    assert (defaults.arch, defaults.ks, defaults.methods) == (BENCH_ARCH, DEFAULT_KS, ",".join(DEFAULT_METHODS))
    shutil.copy(Path(__file__).parents[2] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)  # the default --params (./params.yaml) and --plot (./reports/...) resolve here
    args = parser.parse_args(["memory", "--ks", "2,3", "--methods", "grasp", "--json", "rows.json", "--quiet"])
    assert args.handler(args) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["method"], r["k"], r["arch"]) for r in rows] == [("grasp", 2, BENCH_ARCH), ("grasp", 3, BENCH_ARCH)]
    assert rows[0]["peak_model_bytes"] == rows[1]["peak_model_bytes"]  # O(1) in K
    assert max(r["param_sized_multiple"] for r in rows) <= 4.0  # weights, grads, two AdamW moments; no BN here
    assert (tmp_path / "reports/bench-memory.png").read_bytes()[:4] == b"\x89PNG"


def test_cost_bench_splits_add_up_to_the_step(cost) -> None:
    from flows.bench.cost import SPLITS

    rows = cost["rows"]
    assert [r["stage"] for r in rows] == [0, 1]  # tiny config: 3 domains = 2 sources
    for row in rows:
        assert all(row[key] >= 0 for key in SPLITS), row
        assert row["mlflow_run_s"] > 0 and row["register_s"] > 0 and row["finetune_s"] > 0
        assert sum(row[key] for key in SPLITS) == pytest.approx(row["step_s"], abs=0.01)
    assert rows[1]["align_s"] > 0  # stage 1 merges: alignment ran
    assert sum(r["step_s"] for r in rows) < cost["wall_s"]  # measured inside the bench's own wall time


def test_run_report_is_self_contained_and_logged(cost) -> None:
    from flows.reports.run_report import write_run_report
    from flows.stores.tracking import Tracker

    info = cost["info"]
    ws = Path(info["workspace"])
    summary = SimpleNamespace(model_name=info["model_name"], target=info["target"],
                              parent_run_id=info["parent_run_id"], steps=cost["steps"], versions=cost["versions"],
                              methods=[{"method": "ensemble", "test_accuracy": 0.5},
                                       {"method": "fusion", "test_accuracy": 0.6}])
    path = write_run_report(summary, ws, info["tracking_uri"], threshold=0.3)
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 3  # accuracy, alignment heatmap, memory
    assert '<table class="stages">' in page and all(f"<td>{v}</td>" in page for v in cost["versions"])
    assert "fusion" in page and "threshold 0.3" in page
    client = Tracker(ws, tracking_uri=info["tracking_uri"]).client
    logged = [a.path for a in client.list_artifacts(info["parent_run_id"], "report")]
    assert logged == ["report/run-report.html"]
