"""`transfer.start: mean` in the Prefect flow (`grasp run`): stage 0 is the mean of the sources, registered with
every source it holds; lineage walks back to them; with the default `transfer.after_mean: none` the later stages
transfer nothing (the mean holds their sources) while a source added later goes through the policy; the core
engine gives the same final weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(ws: Path):
    from flows.pipeline.run import run_pipeline
    from flows.runtime.options import RunOptions

    return run_pipeline(RunOptions(ws, ws / "params.yaml", tracking_uri=f"sqlite:///{ws}/mlflow.db", quiet=True))


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory, prefect_harness):
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("ws")
    params = {**TINY_PARAMS, "data": {**TINY_PARAMS["data"], "domains": 4}, "transfer": {"start": "mean"}}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws, _run(ws)


def _versions(ws: Path, model_name: str) -> dict[str, dict]:
    from flows.stores.tracking import Tracker

    return {v["version"]: v for v in Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db").versions(model_name)}


def _stage_metrics(ws: Path, version: dict) -> dict[str, float]:
    """The metrics of the MLflow run a registered version was logged from."""
    from flows.stores.tracking import Tracker

    return Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db").client.get_run(version["run_id"]).data.metrics


def test_after_a_mean_start_no_stage_transfers_a_source_the_mean_holds(mean_run):
    ws, summary = mean_run
    versions = _versions(ws, summary.model_name)
    assert versions[summary.versions[0]]["tags"]["transfer_applied"] == "none (stage 0 adopts its source)"
    for version in summary.versions[1:]:
        record = versions[version]
        assert record["tags"]["transfer_applied"] == "none (held by the mean start)", record["tags"]
        metrics = _stage_metrics(ws, record)
        assert metrics["transfer/tensors"] == 0 and metrics["transfer/params"] == 0
        assert "align/mean" in metrics  # aligned as every stage is, then nothing moved


def test_stage_0_is_the_mean_registered_with_every_source_it_holds(mean_run, capsys):
    from flows.cli import main
    from grasp_core.checkpoints import file_sha256

    ws, summary = mean_run
    area = sorted(p.stem for p in (ws / "checkpoints" / "sources").glob("*.safetensors"))
    assert summary.sources[0] == "mean" and len(summary.sources) == len(area)  # the mean, then K-1 sources
    stage0 = _versions(ws, summary.model_name)[summary.versions[0]]["tags"]
    assert stage0["source_domain"] == "mean" and stage0["start_chosen"] == "mean" and stage0["stage"] == "0"
    members = json.loads(stage0["start_sources"])
    assert sorted(m["domain"] for m in members) == area  # every source, the order's first one included
    assert all(m["sha256"] == file_sha256(ws / "checkpoints" / "sources" / f"{m['domain']}.safetensors")
               for m in members)
    assert [m["domain"] for m in members[1:]] == summary.sources[1:]  # then the order's other sources
    uri = ["--workdir", str(ws), "--tracking-uri", f"sqlite:///{ws}/mlflow.db"]
    capsys.readouterr()
    assert main(["lineage", summary.versions[-1], *uri]) == 0
    assert f"mean of {len(area)} sources" in capsys.readouterr().out
    assert main(["lineage", summary.versions[-1], "--verify", *uri]) == 0, capsys.readouterr().out


def test_verify_flags_a_changed_source_of_the_mean(mean_run, tmp_path, capsys):
    from flows.cli import main

    ws, summary = mean_run
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, symlinks=True)
    members = json.loads(_versions(copy, summary.model_name)[summary.versions[0]]["tags"]["start_sources"])
    victim = copy / "checkpoints" / "sources" / f"{members[0]['domain']}.safetensors"  # in no stage but the mean
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert main(["lineage", summary.versions[0], "--verify", "--workdir", str(copy), "--tracking-uri",
                 f"sqlite:///{copy}/mlflow.db"]) == 4
    assert f"checkpoints/sources/{members[0]['domain']}.safetensors" in capsys.readouterr().out


def test_core_engine_gives_the_same_final_weights(mean_run):
    """`grasp run --engine core` (grasp_core's GRASP method) on the same params and sources ends on the very
    weights the flow's last stage saved."""
    import dataclasses

    from flows.pipeline.core_run import method_context, prepare_sources
    from flows.pipeline.workspace import Workspace
    from flows.reports.progress import Progress
    from flows.runtime.execution import AUTO
    from grasp_core.config import load_config
    from grasp_core.methods import run_method
    from tests.integration.test_pipeline import _tensors_sha256

    ws, summary = mean_run
    cfg, workspace, progress = load_config(ws / "params.yaml"), Workspace(ws), Progress(True, False)
    target, sources, classes, trained = prepare_sources(cfg, workspace, progress)
    assert trained == 0  # the flow's sources, re-used
    hashes: list[str] = []

    def on_step(step):  # the live target of each stage, hashed as the test hashes the flow's checkpoint
        from safetensors.torch import save_file

        path = ws / "core-step.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in step.target.state_dict().items()}, str(path))
        hashes.append(_tensors_sha256(path))

    ctx = dataclasses.replace(method_context(cfg, workspace, target, sources, classes, progress), on_step=on_step)
    with AUTO.autocast():
        result = run_method("grasp", ctx)
    assert result.detail["start_chosen"] == "mean"
    assert len(hashes) == len(summary.steps)
    assert hashes[-1] == _tensors_sha256(summary.steps[-1].checkpoint.path)


def test_a_source_added_later_is_one_stage_on_the_champion_and_the_mean_is_kept(mean_run, prefect_harness):
    import torch

    from tests.conftest import add_perturbed_source

    ws, summary = mean_run
    starts = sorted((ws / "checkpoints" / "targets").rglob("start-mean-*.safetensors"))
    torch.manual_seed(17)  # the nudge of the new source: the same source, hence the same stage, every run
    add_perturbed_source(ws, summary.sources[1], "late")
    champion = summary.versions[-1]
    later = _run(ws)
    assert later.sources == ["late"] and len(later.versions) == 1 and later.merged_before == 3  # distinct sources
    record = _versions(ws, summary.model_name)[later.versions[0]]
    tags = record["tags"]
    assert tags["parent_version"] == champion and tags["stage"] == str(len(summary.steps))
    assert "start_chosen" not in tags and "start_sources" not in tags
    # the mean does not hold the new source: it goes through `transfer.policy` (soft), and something moves
    assert tags["transfer_applied"] == "soft" and _stage_metrics(ws, record)["transfer/tensors"] > 0
    assert sorted((ws / "checkpoints" / "targets").rglob("start-mean-*.safetensors")) == starts
