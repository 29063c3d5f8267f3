"""flows.stores.tracking against a real MLflow 3 (SQLite + local artifacts): assert on what MLflow stored."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flows.reports.confusion_plot import confusion_png
from flows.stores.registry import load_model
from flows.stores.stage_runs import alignment_csv, step_metrics
from flows.stores.tracking import Tracker, TrackingError, flatten_params
from grasp_core.checkpoints import CheckpointHeader, save_checkpoint
from grasp_core.config import Config, flatten
from grasp_core.data import DomainData
from grasp_core.errors import CheckpointMismatchError
from grasp_core.grasp import StepResult, run_grasp, target_loaders
from grasp_core.models import build_model
from grasp_core.models.small_cnn import SmallCNN
from tests.conftest import tiny_split

pytestmark = pytest.mark.integration

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    workspace = tmp_path_factory.mktemp("ws")
    return Tracker(workspace, tracking_uri=f"sqlite:///{workspace}/mlflow.db")


@pytest.fixture(scope="module")
def results() -> list[StepResult]:
    """Two real GRASP stages (initial fine-tune, then one merged source) on seeded tensors."""
    cfg = Config()
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=1, epochs=1),
                              data=dataclasses.replace(cfg.data, augment=False))
    domain = DomainData(name="t", classes=("0", "1", "2"), train=tiny_split(96, seed=1), val=tiny_split(30, seed=2),
                        test=tiny_split(30, seed=3))

    def stream():
        for i in range(2):
            torch.manual_seed(100 + i)
            yield f"s{i}", build_model("small_cnn", 3, (1, 4, 4))

    return list(run_grasp(stream(), target_loaders(domain, cfg), cfg))


def _checkpoint(path: Path, seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = build_model("small_cnn", 3, (1, 8, 8))
    save_checkpoint(model, path, CheckpointHeader("small_cnn", 3, CLASSES, (1, 8, 8)))
    return path, model.state_dict()


def _artifacts(tracker: Tracker, run_id: str, folder: str | None = None) -> set[str]:
    return {f.path for f in tracker.client.list_artifacts(run_id, folder)}


def test_parent_and_nested_step_runs_store_params_metrics_and_artifacts(tracker, results, tmp_path):
    from matplotlib.figure import Figure

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"transfer": {"threshold": 0.3}}))
    stage = results[1]
    csv_path = alignment_csv(stage, tmp_path / "out" / "alignment.csv")
    png_path = confusion_png(stage, CLASSES, tmp_path / "out" / "confusion.png")
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    with tracker.parent_run("grasp-run", flatten(Config()), {"flow_run_id": "f-1"}, params_file) as parent_id:
        step_id = tracker.step_run("grasp-step[s1]", step_metrics(stage), {"stage": stage.stage, "source": "s1"},
                                   {"policy": "paper"}, artifacts={"": csv_path, "plots": png_path},
                                   tables={"alignment": [{"param_name": "w", "alignment": 0.5}]},
                                   figures={"loss": figure})

    parent, step = tracker.client.get_run(parent_id), tracker.client.get_run(step_id)
    assert parent.info.status == "FINISHED" and step.info.status == "FINISHED"
    assert parent.data.params["transfer.threshold"] == str(Config().transfer.threshold)
    assert parent.data.params["baselines.methods"].startswith("[")
    assert parent.data.tags["flow_run_id"] == "f-1" and parent.data.tags["mlflow.runName"] == "grasp-run"
    assert step.data.tags["mlflow.parentRunId"] == parent_id and step.data.tags["policy"] == "paper"
    assert step.data.params == {"stage": "1", "source": "s1"}
    metrics = step.data.metrics
    expected = {"val/accuracy", "test/accuracy", "test/class_0_accuracy", "test/class_2_accuracy",
                "memory/peak_rss_bytes", "memory/cuda_peak_bytes", "memory/param_bytes_alive", "memory/models_alive",
                "memory/param_sized_multiple", "transfer/tensors", "transfer/tensors_frac", "transfer/params",
                "transfer/params_frac", "align/mean", "align/min", "align/max", "align/median", "time/align_s",
                "time/transfer_s", "time/finetune_s", "time/evaluate_s", "time/step_s", "finetune/steps"}
    assert expected <= metrics.keys(), expected - metrics.keys()
    assert metrics["test/accuracy"] == pytest.approx(stage.test_accuracy)
    assert metrics["transfer/tensors"] == len(stage.transferred)
    assert metrics["align/min"] <= metrics["align/median"] <= metrics["align/max"]
    assert "params.yaml" in _artifacts(tracker, parent_id)
    assert {"alignment.csv", "plots", "tables", "figures"} <= _artifacts(tracker, step_id)
    assert _artifacts(tracker, step_id, "plots") == {"plots/confusion.png"}
    assert _artifacts(tracker, step_id, "tables") == {"tables/alignment.json"}
    assert _artifacts(tracker, step_id, "figures") == {"figures/loss.png"}
    nested = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert [r.info.run_id for r in nested] == [step_id]
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (tracker.workspace / "mlartifacts").as_uri()


def test_step_helpers_describe_the_stage(results, tmp_path):
    first, merged = results
    assert not any(k.startswith("align/") for k in step_metrics(first))
    rows = (alignment_csv(merged, tmp_path / "a.csv")).read_text().splitlines()
    assert rows[0] == "param_name,alignment,transferred,numel"
    names = [name for name, _ in merged.target.named_parameters()]
    assert [r.split(",")[0] for r in rows[1:]] == names
    moved = {r.split(",")[0] for r in rows[1:] if r.split(",")[2] == "True"}
    assert moved == set(merged.transferred)
    assert (confusion_png(merged, CLASSES, tmp_path / "c.png")).read_bytes()[:4] == b"\x89PNG"


def test_register_twice_then_aliases_and_load_model(tracker, tmp_path):
    name = "grasp-test"
    ckpt1, _ = _checkpoint(tmp_path / "v1.safetensors", seed=1)
    ckpt2, state2 = _checkpoint(tmp_path / "v2.safetensors", seed=2)
    with tracker.parent_run("grasp-run", {}, {}) as parent_id:
        run1 = tracker.step_run("grasp-step[s1]", {"val/accuracy": 0.5}, {}, {})
        v1 = tracker.register(ckpt1, name, run1, {"source_domain": "s1", "parent_version": ""})
        run2 = tracker.step_run("grasp-step[s2]", {"val/accuracy": 0.7}, {}, {}, parent_run_id=parent_id)
        v2 = tracker.register(ckpt2, name, run2, {"source_domain": "s2", "parent_version": v1})
    assert (v1, v2) == ("1", "2")
    tracker.set_alias(name, "champion", v1)
    tracker.set_alias(name, "challenger", v2)
    assert tracker.get_alias_version(name, "challenger") == "2"
    assert tracker.get_alias_version(name, "nope") is None and tracker.get_alias_version("no-model", "champion") is None

    versions = tracker.versions(name)
    assert [(v["version"], v["run_id"], v["aliases"]) for v in versions] == [("1", run1, ["champion"]),
                                                                             ("2", run2, ["challenger"])]
    assert versions[1]["tags"]["parent_version"] == "1" and versions[1]["tags"]["source_domain"] == "s2"
    assert len(versions[0]["tags"]["checkpoint_sha256"]) == 64
    stored = tracker.client.get_model_version(name, "2")
    assert stored.tags == versions[1]["tags"] and stored.run_id == run2
    assert [f"models:/{o.model_id}" for o in tracker.client.get_run(run2).outputs.model_outputs] == [stored.source]

    model = load_model(f"models:/{name}@challenger", tracking_uri=tracker.tracking_uri)
    assert type(model) is SmallCNN and not model.training
    assert model.state_dict().keys() == state2.keys()
    assert all(torch.equal(model.state_dict()[k], state2[k]) for k in state2)
    by_number = load_model(f"models:/{name}/1", tracking_uri=tracker.tracking_uri)
    assert not torch.equal(by_number.head.weight, model.head.weight)


def test_a_retried_step_reuses_its_run_logged_model_and_version_and_keeps_one_curve(tracker, tmp_path):
    name = "grasp-retry"
    ckpt, _ = _checkpoint(tmp_path / "r.safetensors", seed=3)
    history = {"finetune/val_accuracy": [0.5, 0.6, 0.7], "finetune/train_loss": [1.0, 0.8, 0.6]}
    with tracker.parent_run("grasp-run", {}, {}) as parent_id:
        first = tracker.step_run("stage00-s1", {"val/accuracy": 0.7}, {}, {}, history=history)
        version = tracker.register(ckpt, name, first, {}, "Stage 0 in plain words.")
        # the retry of a task whose first attempt got this far (e.g. a lost answer from the store)
        again = tracker.step_run("stage00-s1", {"val/accuracy": 0.7}, {}, {}, history=history)
        assert again == first and tracker.register(ckpt, name, again, {}, "Stage 0 in plain words.") == version
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    curve = tracker.client.get_metric_history(first, "finetune/val_accuracy")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    models = tracker.client.search_logged_models(experiment_ids=[tracker.experiment_id],
                                                 filter_string=f"source_run_id = '{first}'")
    assert len(models) == 1 and len(tracker.versions(name)) == 1
    assert tracker.client.get_model_version(name, version).description == "Stage 0 in plain words."


def test_registered_pyfunc_predicts_logits_without_pickle(tracker, tmp_path):
    import mlflow

    name = "grasp-pyfunc"
    ckpt, state = _checkpoint(tmp_path / "m.safetensors", seed=3)
    with tracker.parent_run("grasp-run", {}, {}):
        run_id = tracker.step_run("grasp-step[s1]", {}, {}, {})
        tracker.register(ckpt, name, run_id, {})
    mlflow.set_tracking_uri(tracker.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)  # (N, C, H, W)
    model = build_model("small_cnn", 3, (1, 8, 8))
    model.load_state_dict(state)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pyfunc.predict(x), expected, rtol=1e-5, atol=1e-6)
    root = Path(tracker.client.get_model_version_download_uri(name, "1").removeprefix("file://"))
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert "artifacts/m.safetensors" in files and "mlflow_model.py" in files
    assert not any(f.endswith((".pkl", ".pickle", ".pt", ".pth")) for f in files), files


def test_failure_inside_parent_run_marks_it_failed_and_registers_nothing(tracker, tmp_path):
    name = "grasp-failed"
    ckpt, _ = _checkpoint(tmp_path / "m.safetensors", seed=4)
    with pytest.raises(RuntimeError, match="fine-tune diverged"):
        with tracker.parent_run("grasp-run", {"seed": 0}, {}) as parent_id:
            run_id = tracker.step_run("grasp-step[s1]", {"val/accuracy": 0.1}, {}, {})
            raise RuntimeError("fine-tune diverged")
            tracker.register(ckpt, name, run_id, {})  # never reached: registration is the last act
    assert tracker.client.get_run(parent_id).info.status == "FAILED"
    assert tracker.versions(name) == [] and tracker.get_alias_version(name, "champion") is None


def test_register_refuses_a_pickle_before_logging_anything(tracker, tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    with tracker.parent_run("grasp-run", {}, {}):
        run_id = tracker.step_run("grasp-step[s1]", {}, {}, {})
        with pytest.raises(CheckpointMismatchError, match="pickle-based"):
            tracker.register(bad, "grasp-bad", run_id, {})
    assert tracker.versions("grasp-bad") == []
    assert tracker.client.get_run(run_id).outputs.model_outputs == []


def test_step_run_needs_a_parent_and_load_model_names_what_is_missing(tracker, tmp_path):
    with pytest.raises(TrackingError, match="no parent run"):
        tracker.step_run("orphan", {}, {}, {})
    with pytest.raises(TrackingError, match="not a registry URI"):
        load_model("runs:/abc/model", tracking_uri=tracker.tracking_uri)
    with pytest.raises(TrackingError, match="not in the registry"):
        load_model("models:/grasp-test@nope", tracking_uri=tracker.tracking_uri)
    with pytest.raises(TrackingError, match="no MLflow database"):
        load_model("models:/grasp-test@champion", tracking_uri=f"sqlite:///{tmp_path}/missing.db")


def test_flatten_params_dots_nested_keys_and_cuts_long_values():
    flat = flatten_params({"transfer": {"threshold": 0.3, "policy": "paper"}, "align.batches": 1, "x": "y" * 7000})
    assert flat["transfer.threshold"] == "0.3" and flat["transfer.policy"] == "paper" and flat["align.batches"] == "1"
    assert len(flat["x"]) == 6000 and flat["x"].endswith("...[truncated]")


def test_importing_tracking_loads_neither_mlflow_nor_torch():
    code = "import sys, flows.stores.tracking; print(sorted({'mlflow', 'torch', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_start_warm_up_imports_pyfunc_in_a_non_daemon_thread(tmp_path: Path) -> None:
    """In a fresh process: opening the store leaves registration's imports to the warm-up thread."""
    script = f"""
import sys
from pathlib import Path
from flows.stores.tracking import Tracker
tracker = Tracker(Path({str(tmp_path)!r}), tracking_uri="sqlite:///{tmp_path}/mlflow.db")
before = "mlflow.pyfunc" in sys.modules
thread = tracker.start_warm_up()
print(before, thread.daemon, thread.name)
thread.join(120)
print(thread.is_alive(), "mlflow.pyfunc" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "grasp-mlflow-warm-up", "False", "True"], out.stderr[-2000:]
