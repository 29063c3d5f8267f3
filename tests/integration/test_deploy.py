"""Deploying the champion of one tiny pipeline run: the self-contained registered model, `grasp export` (ONNX
and TorchScript, parity logged on MLflow), `grasp predict` (PyTorch and ONNX Runtime), `mlflow models serve`
answering like `grasp predict`, and `grasp bench deploy`'s default invocation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.test_cli_core import grasp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_NO_INSTALLED_GRASP = """
import importlib.util, json, sys
# drop the editable install's finder and this checkout from the path: only the model's own copy may import
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path = [p for p in sys.path if p not in ("", {root!r})]
assert importlib.util.find_spec("grasp_core") is None, "grasp_core is still importable outside the model"
import mlflow.pyfunc, numpy as np
model = mlflow.pyfunc.load_model({model!r})
logits = model.predict(np.zeros((2, *{shape!r}), dtype=np.float32))
print(json.dumps({{"shape": list(logits.shape), "grasp_core": sys.modules["grasp_core"].__file__}}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    """(workspace, tracking URI, model name) of one tiny run whose last version is champion."""
    from flows.pipeline.run import run_pipeline
    from flows.runtime.options import RunOptions
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("deploy")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    uri = f"sqlite:///{ws}/mlflow.db"
    summary = run_pipeline(RunOptions(ws, ws / "params.yaml", tracking_uri=uri, quiet=True))
    return ws, uri, summary.model_name


def _cli(ws: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    return grasp(*args, "--workdir", str(ws), "--tracking-uri", uri, cwd=ws)


def _champion(uri: str, name: str):  # type: ignore[no-untyped-def]
    import mlflow

    client = mlflow.MlflowClient(uri)
    return client, client.get_model_version_by_alias(name, "champion")


def _target_test(ws: Path, uri: str, name: str) -> Path:
    _, mv = _champion(uri, name)
    return ws / "data" / mv.tags["target_domain"] / "test"


def test_registered_model_carries_its_code_requirements_and_example(run, tmp_path):
    import mlflow

    ws, uri, name = run
    client, mv = _champion(uri, name)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(
        name, mv.version), dst_path=str(tmp_path), tracking_uri=uri))
    flavor = yaml.safe_load((local / "MLmodel").read_text())
    assert flavor["flavors"]["python_function"]["code"] == "code"
    assert (local / "code" / "grasp_core" / "checkpoints.py").is_file()
    pins = (local / "requirements.txt").read_text().split()
    assert {p.split("==")[0] for p in pins} >= {"mlflow", "torch", "safetensors", "numpy"}
    assert all("==" in p for p in pins)
    assert (local / "serving_input_example.json").is_file() and flavor["saved_input_example_info"]
    shape = tuple(json.loads(flavor["signature"]["inputs"])[0]["tensor-spec"]["shape"][1:])  # (C, H, W)
    code = _NO_INSTALLED_GRASP.format(root=str(Path(__file__).parents[2]), model=str(local), shape=shape)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(loaded["grasp_core"]).is_relative_to(local) and loaded["shape"][0] == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_checks_parity_and_logs_it_on_the_versions_run(run, fmt):
    ws, uri, name = run
    out = _cli(ws, uri, "export", "--format", fmt, "--out", f"exported/model.{fmt}", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["max_abs_logit_diff"] <= 1e-4 and report["agreement_frac"] == 1.0 and report["test_images"] > 0
    path = ws / "exported" / f"model.{fmt}"
    assert path.stat().st_size == report["size_bytes"]
    client, mv = _champion(uri, name)
    assert report["version"] == str(mv.version)
    metrics = client.get_run(mv.run_id).data.metrics
    assert metrics[f"export/{fmt}/max_abs_logit_diff"] == pytest.approx(report["max_abs_logit_diff"])
    assert metrics[f"export/{fmt}/size_bytes"] == path.stat().st_size
    assert metrics[f"export/{fmt}/latency_p50_ms_b1"] > 0
    assert f"export/model.{fmt}" in [a.path for a in client.list_artifacts(mv.run_id, "export")]


def test_export_of_an_unknown_version_fails_in_one_line_and_writes_nothing(run):
    ws, uri, _ = run
    out = _cli(ws, uri, "export", "99", "--format", "onnx", "--out", "missing.onnx")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("grasp: error: ")
    assert "no version or alias '99'" in out.stderr and not (ws / "missing.onnx").exists()


def test_predict_matches_evaluation_and_onnx_runtime(run):
    ws, uri, name = run
    test_dir = _target_test(ws, uri, name)
    torch_out = _cli(ws, uri, "predict", "@champion", str(test_dir), "--json")
    onnx_out = _cli(ws, uri, "predict", str(test_dir), "--json", "--onnx")
    assert torch_out.returncode == 0 and onnx_out.returncode == 0, torch_out.stderr + onnx_out.stderr
    on_torch, on_onnx = json.loads(torch_out.stdout)["predictions"], json.loads(onnx_out.stdout)["predictions"]
    assert [r["class"] for r in on_torch] == [r["class"] for r in on_onnx]
    for a, b in zip(on_torch, on_onnx, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    # the same preprocessing as training: accuracy over the test folder is the version's logged test accuracy
    correct = sum(Path(r["file"]).parent.name == r["class"] for r in on_torch)
    client, mv = _champion(uri, name)
    assert correct / len(on_torch) == pytest.approx(client.get_run(mv.run_id).data.metrics["test/accuracy"])
    table = _cli(ws, uri, "predict", str(next(test_dir.rglob("*.png"))))
    assert table.returncode == 0 and "probabilities" in table.stdout and f"{name} v{mv.version}" in table.stdout


def test_predict_refuses_a_missing_path_in_one_line(run):
    ws, uri, _ = run
    out = _cli(ws, uri, "predict", "@champion", "no/such/dir")
    assert out.returncode == 2 and out.stderr.strip() == ("grasp: error: no/such/dir: no such file or folder; "
                                                          "give image files or folders of images")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, attempts: int = 300) -> None:
    """Poll /ping (bounded: `attempts` tries, each waiting up to 1 s for an answer or for the server to exit)."""
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            try:
                proc.wait(timeout=1)  # an early exit is a failure, not something to wait out
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"mlflow models serve exited with {proc.returncode}; see {log}") from None
    raise AssertionError(f"{url} did not answer after {attempts} tries")


def test_served_model_answers_like_grasp_predict(run, tmp_path):
    import numpy as np

    from flows.ops.deploy import fetch_version
    from flows.ops.predict import softmax
    from grasp_core.data import load_images

    ws, uri, name = run
    files = sorted(_target_test(ws, uri, name).rglob("*.png"))[:8]
    expected = json.loads(_cli(ws, uri, "predict", *map(str, files), "--json").stdout)["predictions"]
    port = _free_port()
    # as from an activated venv: the server execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                             "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log")
        shape = fetch_version(ws, uri, "@champion", None).header.input_shape
        body = json.dumps({"inputs": load_images(files, shape).numpy().tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            logits = np.asarray(json.loads(answer.read())["predictions"], dtype=np.float32)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started, nothing else
        proc.wait(timeout=60)
        log.close()
    probs = softmax(logits)
    classes = list(expected[0]["probabilities"])
    assert [classes[i] for i in probs.argmax(1)] == [r["class"] for r in expected]
    for row, p in zip(expected, probs, strict=True):
        assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-6)


def test_bench_deploy_default_invocation(run, tmp_path):
    ws, uri, _ = run
    out = _cli(ws, uri, "bench", "deploy", "--json", str(tmp_path / "rows.json"), "--quiet")
    assert out.returncode == 0, out.stderr
    rows = {r["format"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert list(rows) == ["pytorch", "onnx", "torchscript"]
    for row in rows.values():
        assert row["file_bytes"] > 0 and row["peak_rss_mb"] > 0 and 0 < row["p50_ms_b1"] <= row["p95_ms_b1"]
        assert row["max_abs_logit_diff"] <= 1e-4 and row["agreement_frac"] == 1.0
    assert "onnx p50 batch 1" in out.stdout
