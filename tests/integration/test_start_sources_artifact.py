"""A mean start of 80 sources against a real MLflow (SQLite + local artifacts): the source list outgrows a tag, so
stage 0's run logs it as a JSON artifact (flows.pipeline.tasks.register_task) and lineage, `--verify`, the
resume/incremental plan and the accuracy matrix read it back from there."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # one registration: ~35 s on a busy 2-core box

N_SOURCES = 80  # ~130 characters each: ~10,500 characters of JSON, past MLflow's 8,000 for a run tag


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """80 source files on disk and stage 0 (a mean of all of them) registered as the pipeline registers it."""
    from flows.pipeline.stage import StepArtifact
    from flows.pipeline.start import members_file, start_artifacts
    from flows.pipeline.tasks import register_task
    from flows.stores.start_sources import encode_members
    from flows.stores.tracking import Tracker
    from grasp_core.checkpoints import CheckpointHeader, SavedCheckpoint, file_sha256, read_header, save_checkpoint
    from grasp_core.config import Config
    from grasp_core.data import DomainData
    from grasp_core.grasp import run_grasp, target_loaders
    from grasp_core.models import build_model
    from tests.conftest import tiny_split

    ws = tmp_path_factory.mktemp("ws")
    sources = ws / "checkpoints" / "sources"
    sources.mkdir(parents=True)
    members = []
    for i in range(N_SOURCES):  # the bytes stand for checkpoints: lineage --verify only hashes them
        path = sources / f"site_{i:03d}.safetensors"
        path.write_bytes(f"source {i}".encode())
        members.append({"domain": path.stem, "sha256": file_sha256(path),
                        "md5": hashlib.md5(path.read_bytes()).hexdigest()})
    mean = ws / "checkpoints" / "targets" / "t" / "start-mean-0123456789ab.safetensors"
    text, pointer = encode_members(members, members_file(mean).name)
    members_file(mean).parent.mkdir(parents=True)
    members_file(mean).write_text(text)  # as flows.pipeline.start.choose_start writes it

    cfg = Config()
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=1),
                              data=dataclasses.replace(cfg.data, augment=False))
    domain = DomainData("t", ("0", "1", "2"), tiny_split(96, seed=1), tiny_split(30, seed=2), tiny_split(30, seed=3))
    result = next(run_grasp(iter([("mean", build_model("small_cnn", 3, (1, 4, 4)))]), target_loaders(domain, cfg),
                            cfg))
    ckpt = save_checkpoint(result.target, ws / "stage0.safetensors", CheckpointHeader("small_cnn", 3, ("0", "1", "2"),
                                                                                         (1, 4, 4)))
    step = StepArtifact(SavedCheckpoint(ckpt.path, file_sha256(ckpt.path), read_header(ckpt.path)), result.detached(),
                        "chain")
    tags = {"stage": "0", "source_domain": "mean", "source_sha256": "", "target_domain": "t",
            "start_chosen": "mean", **pointer}
    tracker = Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db")
    with tracker.parent_run("grasp-t", {}, {}) as parent_id:
        version = register_task.fn(tracker, parent_id, "grasp-t", step, ["0", "1", "2"], tags, ws / "reports",
                                   extra_artifacts=start_artifacts(tags, mean))
    return ws, tracker, version, members


def test_the_list_is_an_artifact_of_the_versions_run_behind_short_tags(registered):
    ws, tracker, version, members = registered
    stored = tracker.client.get_model_version("grasp-t", version)
    assert "start_sources" not in stored.tags and stored.tags["start_sources_count"] == str(N_SOURCES)
    run = tracker.client.get_run(stored.run_id)
    assert run.data.tags["start_sources_artifact"] == "start/start-mean-0123456789ab.sources.json"
    assert all(run.data.tags[k] == v for k, v in stored.tags.items() if k.startswith("start_"))  # nothing cut
    local = tracker.client.download_artifacts(stored.run_id, run.data.tags["start_sources_artifact"], str(ws))
    assert json.loads(Path(local).read_text()) == members


def test_lineage_verify_plan_and_matrix_read_the_artifact(registered, capsys):
    from flows.cli import main
    from flows.ops.lineage import format_lineage, verify_lineage
    from flows.pipeline.plan import chain_shas, lineage_sources
    from flows.pipeline.start import start_held_shas
    from flows.reports.accuracy_matrix import lineage_step_domains
    from flows.stores.registry import lineage

    ws, tracker, version, members = registered
    rows = lineage(ws, tracker.tracking_uri, version, "grasp-t")
    assert lineage_step_domains(rows[0]) == [m["domain"] for m in members]
    assert f"mean of {N_SOURCES} sources" in format_lineage(rows)
    sources = [f for f in verify_lineage(ws, rows) if f["what"].startswith("source")]
    assert sources == []  # all 80 re-hashed against the artifact's list
    (ws / "checkpoints" / "sources" / "site_042.safetensors").write_bytes(b"changed")
    changed = [f for f in verify_lineage(ws, rows) if f["what"].startswith("source")]
    assert {(f["path"], f["what"]) for f in changed} == {("checkpoints/sources/site_042.safetensors", "source_dvc_md5"),
                                                        ("checkpoints/sources/site_042.safetensors", "source_sha256")}
    chain = lineage_sources(tracker, "grasp-t", version)  # what resume and incremental runs plan from
    assert chain_shas(chain) == {members[0]["sha256"]}
    assert chain_shas(chain, held=True) == {m["sha256"] for m in members}
    assert start_held_shas(chain) == {m["sha256"] for m in members}  # after_mean applies to each, read back
    capsys.readouterr()
    assert main(["lineage", version, "--workdir", str(ws), "--tracking-uri", tracker.tracking_uri,
                 "--model", "grasp-t"]) == 0
    assert f"mean of {N_SOURCES} sources" in capsys.readouterr().out
