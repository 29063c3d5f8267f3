"""Registry operations on one tiny pipeline run: lineage, the promotion gate, the re-hash audit, status and
the lineage plot, asserting on what MLflow stores (aliases, version tags, artifacts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    """(workspace, tracking URI, flow summary) of one tiny run: 2 sources -> versions 1 and 2."""
    from flows.pipeline.run import run_pipeline
    from flows.runtime.options import RunOptions
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("ops")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    uri = f"sqlite:///{ws}/mlflow.db"
    return ws, uri, run_pipeline(RunOptions(ws, ws / "params.yaml", tracking_uri=uri, quiet=True))


@pytest.fixture(scope="module")
def worse(run) -> str:
    """A third version: the champion's checkpoint with every parameter zeroed (predicts one class)."""
    import torch

    from flows.stores.tracking import Tracker
    from grasp_core.checkpoints import load_checkpoint, save_checkpoint

    ws, uri, summary = run
    tracker = Tracker(ws, tracking_uri=uri)
    champion = tracker.client.get_model_version_by_alias(summary.model_name, "champion")
    path = summary.steps[-1].checkpoint.path
    model, header = load_checkpoint(path)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    zeroed = save_checkpoint(model, ws / "checkpoints" / "zeroed.safetensors", header)
    kept = {k: v for k, v in champion.tags.items() if k not in ("checkpoint_sha256", "promotion_history",
                                                                 "last_promotion")}
    tags = {**kept, "stage": "2", "parent_version": str(champion.version)}
    run_id = tracker.step_run("zeroed", {"test/accuracy": 0.0}, {}, tags, parent_run_id=summary.parent_run_id)
    return tracker.register(zeroed.path, summary.model_name, run_id, tags)


def _aliases(uri: str, name: str) -> dict[str, str]:
    import mlflow

    return {a: str(v) for a, v in mlflow.MlflowClient(uri).get_registered_model(name).aliases.items()}


def _history(uri: str, name: str, version: str) -> list[dict]:
    import mlflow

    return json.loads(mlflow.MlflowClient(uri).get_model_version(name, version).tags["promotion_history"])


def _cfg(ws: Path, **promote):
    from grasp_core.config import load_config, replace

    return replace(load_config(ws / "params.yaml"), **{f"promote__{k}": v for k, v in promote.items()})


def test_lineage_walks_from_champion_to_stage_zero(run):
    import mlflow

    from flows.ops.lineage import format_lineage
    from flows.stores.registry import lineage

    ws, uri, summary = run
    rows = lineage(ws, uri)
    assert [r["version"] for r in rows] == summary.versions[::-1]
    assert [r["stage"] for r in rows] == [1, 0]
    assert rows[0]["parent_version"] == rows[1]["version"] and rows[1]["parent_version"] == ""
    assert "champion" in rows[0]["aliases"] and rows[0]["source_domain"] == summary.sources[1]
    stored = mlflow.MlflowClient(uri).get_run(rows[0]["run_id"]).data.metrics
    assert rows[0]["test_accuracy"] == stored["test/accuracy"] and rows[0]["transfer_tensors"] >= 0
    assert rows[1]["dataset_dvc_md5"] == yaml.safe_load((ws / "data.dvc").read_text())["outs"][0]["md5"]
    assert json.loads(json.dumps(rows)) == rows
    text = format_lineage(rows)
    assert text.splitlines()[0].startswith(f"{summary.model_name}: lineage of v{summary.versions[-1]}")
    assert rows[0]["checkpoint_sha256"][:12] in text and "adopted" in text
    assert [r["version"] for r in lineage(ws, uri, summary.versions[0])] == summary.versions[:1]


def test_unknown_references_are_one_line_user_errors(run, tmp_path):
    from flows.stores.registry import lineage
    from grasp_core.errors import GraspError

    ws, uri, summary = run
    with pytest.raises(GraspError, match="no version or alias '@nope'; aliases: @challenger -> v2"):
        lineage(ws, uri, "@nope")
    with pytest.raises(GraspError, match="not a version reference"):
        lineage(ws, uri, "latest")
    with pytest.raises(GraspError, match=f"no registered model 'grasp-1999'; registered: {summary.model_name}"):
        lineage(ws, uri, model_name="grasp-1999")
    with pytest.raises(GraspError, match="no MLflow database there"):
        lineage(tmp_path, f"sqlite:///{tmp_path}/none.db")


def test_promoting_the_champion_itself_is_a_noop(run):
    from flows.pipeline.promotion import promote

    ws, uri, summary = run
    before = _aliases(uri, summary.model_name)
    decision = promote(ws, uri, _cfg(ws), "@challenger", actor="alice")
    assert decision.action == "noop" and not decision.promoted
    assert decision.candidate_test_accuracy == pytest.approx(summary.steps[-1].result.test_accuracy, abs=1e-6)
    assert 0 <= decision.candidate_val_accuracy <= 1
    assert _aliases(uri, summary.model_name) == before
    entry = _history(uri, summary.model_name, decision.candidate)[-1]
    assert entry["action"] == "noop" and entry["who"] == "alice" and entry["dataset_dvc_md5"] == summary.data_md5


def test_the_gate_refuses_a_worse_candidate_then_tolerance_lets_it_through(run, worse):
    from flows.pipeline.promotion import promote
    from flows.stores.registry import lineage

    ws, uri, summary = run
    champion = summary.versions[-1]
    refused = promote(ws, uri, _cfg(ws), worse, auto=True)
    assert refused.action == "refused" and not refused.promoted and refused.champion == champion
    assert refused.candidate_val_accuracy < refused.champion_val_accuracy  # the gate reads validation
    assert (f"refused: candidate v{worse} val accuracy {refused.candidate_val_accuracy:.4f} < champion "
            f"v{champion} {refused.champion_val_accuracy:.4f} - tolerance 0.0000") in refused.message
    assert refused.champion_test_accuracy is not None  # test accuracy is reported beside it
    assert _aliases(uri, summary.model_name)["champion"] == champion
    for version in (worse, champion):  # the decision is on both versions
        entry = _history(uri, summary.model_name, version)[-1]
        assert (entry["action"], entry["who"], entry["candidate"], entry["champion"]) == (
            "refused", "scheduler", worse, champion)
    assert lineage(ws, uri, worse)[0]["promotion_history"][-1]["action"] == "refused"

    too_big = promote(ws, uri, _cfg(ws, tolerance=1.0, max_param_mb=1e-6), worse)
    assert too_big.action == "refused" and "promote.max_param_mb 0.0000" in too_big.message
    assert _aliases(uri, summary.model_name)["champion"] == champion
    try:
        passed = promote(ws, uri, _cfg(ws, tolerance=1.0), worse, actor="bob")
        assert passed.promoted and passed.action == "promoted"
        assert _aliases(uri, summary.model_name)["champion"] == worse
        assert [e["action"] for e in _history(uri, summary.model_name, champion)][-3:] == [
            "refused", "refused", "promoted"]
    finally:
        from flows.stores.tracking import Tracker

        Tracker(ws, tracking_uri=uri).set_alias(summary.model_name, "champion", champion)


def test_verify_lineage_is_clean_then_flags_a_tampered_source(run):
    from flows.ops.lineage import format_findings, verify_lineage
    from flows.pipeline.start import start_members
    from flows.stores.registry import lineage

    ws, uri, summary = run
    rows = lineage(ws, uri)
    assert verify_lineage(ws, rows) == []
    stage0 = rows[-1]
    held = start_members(stage0) or [{"domain": stage0["source_domain"], "md5": stage0["source_dvc_md5"]}]
    victim = ws / "checkpoints" / "sources" / f"{held[0]['domain']}.safetensors"  # a mean start holds every source
    backup = victim.with_suffix(".bak")
    shutil.copy2(victim, backup)
    try:
        with victim.open("r+b") as fh:
            fh.seek(-16, 2)
            fh.write(b"\x00" * 16)
        findings = verify_lineage(ws, rows)
    finally:
        backup.replace(victim)
    assert {(f["version"], f["what"]) for f in findings} == {(stage0["version"], "source_dvc_md5"),
                                                             (stage0["version"], "source_sha256")}
    assert findings[0]["path"] == f"checkpoints/sources/{held[0]['domain']}.safetensors"
    assert findings[0]["expected"] == held[0]["md5"] != findings[0]["actual"]
    assert "NOT verified: 2 findings" in format_findings(findings, rows)
    image = next((ws / "data" / summary.target / "test").rglob("*.png"))
    original = image.read_bytes()
    try:
        image.write_bytes(original + b"\0")
        changed = verify_lineage(ws, rows)
    finally:
        image.write_bytes(original)
    assert [(f["version"], f["what"], f["path"]) for f in changed] == [
        (r["version"], "dataset_file", image.relative_to(ws).as_posix()) for r in rows]
    assert verify_lineage(ws, rows) == []


def test_status_shows_aliases_runs_and_a_waiting_source(run):
    from flows.ops.status import format_status, status

    ws, uri, summary = run
    extra = ws / "checkpoints" / "sources" / "2099.safetensors"
    shutil.copy(ws / "checkpoints" / "base.safetensors", extra)  # new content under a new name
    try:
        report = status(ws, uri)
    finally:
        extra.unlink()
    assert report["champion"]["version"] == report["challenger"]["version"] == summary.versions[-1]
    assert report["runs"][0]["run_id"] == summary.parent_run_id and report["runs"][0]["status"] == "FINISHED"
    assert [s["domain"] for s in report["sources_waiting"]] == ["2099"]
    text = format_status(report)
    assert f"champion    v{summary.versions[-1]}" in text and "checkpoints/sources/2099.safetensors" in text
    assert json.loads(json.dumps(report)) == report
    assert status(ws, uri)["sources_waiting"] == []


def test_lineage_plot_is_written_and_logged_to_the_newest_run(run, tmp_path):
    import mlflow

    from flows.reports.lineage_plot import log_lineage_plot
    from flows.stores.registry import lineage

    ws, uri, _ = run
    rows = lineage(ws, uri)
    path = log_lineage_plot(ws, uri, rows, tmp_path / "lineage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(rows[0]["run_id"], "lineage")]
    assert "lineage/lineage.png" in logged and "lineage/lineage-grasp-2022.png" in logged  # ours + the run report


@pytest.mark.faults
def test_two_concurrent_promotes_each_end_with_a_recorded_decision(run, worse):
    """Two `grasp promote` released together by a barrier: the workspace lock orders them, the second decides
    against the champion the first left (compare-and-set), and neither decision is lost."""
    import threading

    from flows.cli import main

    ws, uri, summary = run
    original = summary.versions[-1]
    params = ws / "params-tolerant.yaml"
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    params.write_text(yaml.safe_dump({**raw, "promote": {"tolerance": 1.0}}))  # both candidates pass the gate
    candidates, codes = [summary.versions[0], worse], {}
    barrier = threading.Barrier(len(candidates))

    def promote(version: str) -> None:
        barrier.wait()
        codes[version] = main(["promote", version, "--workdir", str(ws), "--params", str(params),
                               "--tracking-uri", uri, "--lock-wait", "600"])

    threads = [threading.Thread(target=promote, args=(v,)) for v in candidates]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == dict.fromkeys(candidates, 0), codes
        last = {v: [e for e in _history(uri, summary.model_name, v) if e["candidate"] == v][-1] for v in candidates}
        assert all(e["action"] == "promoted" for e in last.values()), last
        first, second = sorted(candidates, key=lambda v: last[v]["champion"] != original)
        assert last[first]["champion"] == original  # the first decided against the champion it found
        assert last[second]["champion"] == first  # the second against the one the first promoted
        assert _aliases(uri, summary.model_name)["champion"] == second
        assert [e["candidate"] for e in _history(uri, summary.model_name, first)[-2:]] == [first, second]
    finally:
        from flows.stores.tracking import Tracker

        Tracker(ws, tracking_uri=uri).set_alias(summary.model_name, "champion", original)
        params.unlink()


@pytest.mark.faults
def test_a_refused_promote_exits_3_records_the_decision_and_moves_no_alias(run, worse, capsys):
    """Exit 3 (docs/operations.md): the gate refused; the decision is recorded, nothing else is written."""
    import mlflow

    from flows.cli import main
    from flows.stores.tracking import Tracker

    ws, uri, summary = run
    aliases = _aliases(uri, summary.model_name)
    versions = [v["version"] for v in Tracker(ws, tracking_uri=uri).versions(summary.model_name)]
    tags = mlflow.MlflowClient(uri).get_model_version(summary.model_name, worse).tags
    decisions = len(json.loads(tags.get("promotion_history", "[]")))  # earlier tests may have decided on it
    code = main(["promote", worse, "--workdir", str(ws), "--tracking-uri", uri, "--lock-wait", "600"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert f"refused: candidate v{worse}" in out
    assert _aliases(uri, summary.model_name) == aliases, "a refused promotion moved an alias"
    assert [v["version"] for v in Tracker(ws, tracking_uri=uri).versions(summary.model_name)] == versions
    history = _history(uri, summary.model_name, worse)
    assert len(history) == decisions + 1 and history[-1]["action"] == "refused"
    assert not (ws / ".grasp" / "run.lock").exists()


@pytest.mark.faults
@pytest.mark.parametrize("model", ["../../escaped", "/tmp/abs", "grasp-2022/../x"])
def test_a_hostile_model_name_is_refused_and_no_report_is_written(run, model, capsys):
    """`--model` becomes part of report paths (`reports/lineage-<model>.png`): refused as one line, exit 2."""
    from flows.cli import main
    from tests.conftest import writes_nothing

    ws, uri, _ = run
    with writes_nothing(ws.parent):  # nothing inside the workspace, nothing beside it
        code = main(["lineage", "--model", model, "--workdir", str(ws), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("grasp: error: --model: ") and err.count("\n") == 1, err
