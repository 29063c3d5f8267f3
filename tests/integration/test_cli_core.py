"""The whole `grasp run --engine core` and the CLI's bad-input behaviour, through the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import writes_nothing

pytestmark = pytest.mark.integration


def grasp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_core_run_on_a_tiny_config_writes_the_table_and_json(tmp_path, tmp_params):
    tmp_params()
    out = grasp("run", "--engine", "core", "--json", "table.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "table.json").read_text())
    methods = [r["method"] for r in rows]
    assert methods == ["grasp", "transfer_off", "target_only", "best_single", "fusion", "ensemble"]
    for row in rows:
        assert {"method", "test_accuracy", "peak_models_alive", "peak_rss_mb", "wall_s"} <= row.keys()
        assert 0.0 <= row["test_accuracy"] <= 1.0
    by = {r["method"]: r for r in rows}
    assert by["grasp"]["peak_models_alive"] <= 2
    assert by["ensemble"]["peak_models_alive"] == 2  # tiny config: 3 domains = 2 sources
    assert len({r["target_steps"] for r in rows if r["method"] != "ensemble"}) == 1
    assert "grasp stage 1" in out.stderr and "method" in out.stdout
    sources = sorted(p.name for p in (tmp_path / "checkpoints" / "sources").iterdir())
    assert sources == ["2020.safetensors", "2021.safetensors"]
    again = grasp("run", "--engine", "core", "--methods", "grasp", cwd=tmp_path)
    assert again.returncode == 0 and "0 model(s) trained, 3 re-used" in again.stderr


@pytest.mark.parametrize("edit, fragment", [
    ({"transfer.treshold": 0.3}, "unknown key 'transfer.treshold'"),
    ({"model.arch": "vgg"}, "'model.arch' = 'vgg' is unknown"),
    ({"data.root": "nowhere", "data.generator": "nope"}, "'data.generator' = 'nope' is unknown"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, tmp_params, edit, fragment):
    tmp_params(edit)
    out = grasp("run", "--engine", "core", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("grasp: error: ")
    assert fragment in out.stderr and "Traceback" not in out.stderr
    debug = grasp("--debug", "run", "--engine", "core", cwd=tmp_path)
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("engine", ["core", "prefect"])
@pytest.mark.parametrize("edit, message", [
    ({"align.criterion": "hessian"}, "'align.criterion' = 'hessian' is unknown; choose one of: direction, gradient"),
    ({"transfer.policy": "copy_all"}, "'transfer.policy' = 'copy_all' is unknown; choose one of: none, paper, soft"),
])
def test_a_plugin_no_registry_knows_is_refused_before_anything_is_written(tmp_path, tmp_params, engine, edit, message):
    tmp_params(edit)
    with writes_nothing(tmp_path):
        out = grasp("run", "--engine", engine, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"grasp: error: {message}", out.stderr


def test_broken_layout_is_named(tmp_path, tmp_params):
    tmp_params()
    assert grasp("data", cwd=tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "data" / "2021" / "val" / "3")
    out = grasp("run", "--engine", "core", cwd=tmp_path)
    assert out.returncode == 2 and "2021/val" in out.stderr and "'3'" in out.stderr
