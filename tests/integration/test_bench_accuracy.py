"""`grasp bench accuracy` and `grasp bench matrix` on tiny configs, asserting on files and on what MLflow stored."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METHODS = ["grasp", "transfer_off", "ensemble"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread, and far faster when other processes share the 2 cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from flows.bench.accuracy import log_bench, run_accuracy_bench, write_outputs
    from flows.reports.progress import Progress
    from tests.conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("bench")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    rows = run_accuracy_bench(params, root / "work", [0, 1], ["2020", "2022"], METHODS, Progress(quiet=True))
    files = write_outputs(rows, root / "out", wall_s=1.0)
    uri = f"sqlite:///{root}/mlflow.db"
    return root, rows, files, uri, log_bench(rows, files, params, uri, wall_s=1.0, project=root)


def test_rows_cover_every_seed_target_and_method_on_one_budget(bench):
    from flows.bench.accuracy import ROW_KEYS

    _, rows, _, _, _ = bench
    assert len(rows) == 2 * 2 * len(METHODS)
    assert {(r["seed"], r["target"], r["method"]) for r in rows} == {
        (s, t, m) for s in (0, 1) for t in ("2020", "2022") for m in METHODS}
    assert all(tuple(r) == ROW_KEYS and 0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    trained = {r["target_steps"] for r in rows if r["method"] != "ensemble"}
    assert len(trained) == 1 and trained.pop() > 0  # grasp and transfer_off: the same target budget
    assert {r["peak_models_alive"] for r in rows if r["method"] == "grasp"} <= {1, 2}


def test_seed_workspaces_reuse_sources_across_targets_and_with_grasp_run(bench):
    from flows.bench.accuracy import prepare_seed, run_accuracy_bench
    from flows.pipeline.core_run import prepare_sources
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress
    from grasp_core.config import load_config
    from grasp_core.errors import GraspError

    root, _, _, _, _ = bench
    for seed in (0, 1):
        ws = Workspace(root / "work" / f"seed-{seed}")
        cfg = load_config(ws.root / "params.yaml")
        assert cfg.seed == seed
        assert sorted(p.stem for p in ws.sources.iterdir()) == ["2020", "2021", "2022"]
        before = {p.name: p.stat().st_mtime_ns for p in ws.checkpoints.rglob("*.safetensors")}
        prepare_seed(cfg, ws, Progress(quiet=True))
        assert prepare_sources(cfg, ws, Progress(quiet=True))[3] == 0  # `grasp run` there re-uses them too
        assert before == {p.name: p.stat().st_mtime_ns for p in ws.checkpoints.rglob("*.safetensors")}
    with pytest.raises(GraspError, match="--targets: '1999' is unknown; choose from: 2020, 2021, 2022"):
        run_accuracy_bench(root / "params.yaml", root / "work", [0], ["1999"], ["grasp"], Progress(quiet=True))


def test_files_and_mlflow_run_hold_the_results(bench):
    import mlflow

    root, rows, files, uri, run_id = bench
    with open(files["csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = files["md"].read_text()
    assert "| method | 2020 | 2022 | mean |" in md
    assert "| grasp − | 2020 | 2022 | mean |" in md  # paired differences against every control
    assert all(f"| {method} |" in md for method in METHODS[1:])
    assert files["png"].stat().st_size > 1000
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "grasp-bench"
    assert run.info.status == "FINISHED" and run.data.params["bench.methods"] == ",".join(METHODS)
    from grasp_core.config import load_config

    assert run.data.params["transfer.threshold"] == str(load_config(root / "params.yaml").transfer.threshold)
    grasp = [r["test_accuracy"] for r in rows if r["method"] == "grasp"]
    assert run.data.metrics["accuracy/grasp/mean"] == pytest.approx(statistics.fmean(grasp))
    assert "paired/grasp_minus_ensemble/mean" in run.data.metrics
    stored = {Path(a.path).name for a in client.list_artifacts(run_id, "accuracy")}
    assert {"accuracy.csv", "accuracy.md", "accuracy.png"} <= stored
    assert (root / "mlartifacts" / run_id / "artifacts" / "accuracy").is_dir()  # the project folder, not the cwd


def test_matrix_of_a_pipeline_lineage(tmp_path, prefect_harness):
    import mlflow

    from flows.pipeline.run import run_pipeline
    from flows.reports.accuracy_matrix import matrix_for_lineage
    from flows.runtime.options import RunOptions
    from flows.stores.registry import lineage
    from flows.stores.start_sources import start_members
    from tests.conftest import TINY_PARAMS

    # the default `transfer.start: auto`: on this tiny data stage 0 is the mean of both sources, which the
    # matrix reads as both member domains merged at step 0 (flows/reports/accuracy_matrix.py)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_pipeline(RunOptions(tmp_path, tmp_path / "params.yaml", tracking_uri=uri, quiet=True))
    result = matrix_for_lineage(tmp_path, uri)
    rows, domains, target = result["rows"], result["domains"], result["target"]
    assert (len(rows), len(domains)) == (len(summary.versions), 3) and target == "2022"
    registered = lineage(tmp_path, uri)[::-1]
    members = [m["domain"] for m in start_members(registered[0])]
    assert summary.sources[0] == "mean" and sorted(members) == ["2020", "2021"], "the default no longer starts " \
        "from the mean here: this test would not cover the split"
    assert result["merged"] == [members, *([d] for d in summary.sources[1:])]  # never a domain called 'mean'
    for row, version in zip(rows, registered, strict=True):  # the target column is each version's own test accuracy
        assert row[target] == pytest.approx(version["test_accuracy"], abs=1e-6)
    s, base = result["summaries"], result["base"]
    assert base is not None and set(base) == set(domains)
    # BwT: the order's first source is merged only in the mean (step 0); the other one again at the last step
    assert s["bwt"] == pytest.approx(rows[-1][members[0]] - rows[0][members[0]])
    assert s["fwt"] is None  # both sources were seen at step 0: no model before it to read forward transfer from
    assert s["average_accuracy"] == pytest.approx(statistics.fmean(rows[-1][d] for d in domains))
    client = mlflow.MlflowClient(uri)
    run = client.get_run(registered[-1]["run_id"])
    assert run.data.metrics["cl/bwt"] == pytest.approx(s["bwt"]) and "cl/fwt" not in run.data.metrics
    parent = client.get_run(summary.parent_run_id).data.metrics  # the run's own summaries read the mean the same way
    assert parent["cl/bwt"] == pytest.approx(s["bwt"], abs=1e-6) and "cl/fwt" not in parent
    stored = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "cl")}
    assert stored == {"accuracy_matrix.csv", "accuracy_matrix.png"}
    with open(result["csv"]) as fh:
        assert [r["merged_domains"] for r in csv.DictReader(fh)][1] == "+".join(members)  # after the base row
