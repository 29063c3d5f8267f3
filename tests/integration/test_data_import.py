"""`grasp data import DIR` through the console script: GX gate, DVC tracking, atomic swap, then `grasp run`."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.stores.versioning import read_dvc_hash
from tests.integration.test_cli_core import grasp
from tests.trees import plain_tree, split_tree

pytestmark = pytest.mark.integration

TINY_RUN = {"data.generator": "none", "base.mode": "init", "align.batch_size": 4, "finetune.batch_size": 4,
            "sources.batch_size": 4, "data.target_train_frac": 1.0}


def test_import_validates_tracks_and_feeds_a_run(tmp_path, tmp_params):
    tmp_params(TINY_RUN)
    src = plain_tree(tmp_path / "drop", ["year_10-11", "year_1-2", "year_3-4"], per_class=12)
    out = grasp("data", "import", str(src), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "imported 3 domains" in out.stdout and "converted to RGB" in out.stdout
    assert (tmp_path / "data/_domains.txt").read_text().split() == ["year_1-2", "year_3-4", "year_10-11"]
    assert read_dvc_hash(tmp_path / "data.dvc").endswith(".dir")
    assert json.loads((tmp_path / "reports/validation/gx_validation.json").read_text())["success"] is True
    assert not list(tmp_path.glob(".data.*")), "no temporary folder left behind"

    listed = grasp("data", cwd=tmp_path)
    assert listed.returncode == 0 and "year_10-11: train 14, val 4, test 6" in listed.stdout
    amp = grasp("run", "--engine", "core", "--device", "cpu", "--amp", cwd=tmp_path)
    assert amp.returncode == 2 and "mixed precision (GRASP_AMP=1 or --amp) needs CUDA" in amp.stderr
    run = grasp("run", "--engine", "core", "--methods", "grasp", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "target year_10-11 | sources year_1-2, year_3-4" in run.stdout


def test_a_refused_import_leaves_the_old_data_untouched(tmp_path, tmp_params):
    tmp_params(TINY_RUN)
    assert grasp("data", "import", str(split_tree(tmp_path / "good", ["2000", "2001"])), "--no-dvc",
                 cwd=tmp_path).returncode == 0
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*"))
    again = grasp("data", "import", str(tmp_path / "good"), cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --replace" in again.stderr

    dup = split_tree(tmp_path / "dup", ["2000", "2001"])
    shutil.copy(dup / "2000/train/a/0.png", dup / "2001/test/a/9.png")  # a train image leaks into test
    refused = grasp("data", "import", str(dup), "--replace", "--no-dvc", cwd=tmp_path)
    assert refused.returncode == 2 and "grasp: error: data validation failed" in refused.stderr
    assert "sha256" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*")) == before
    assert not list(tmp_path.glob(".data.*"))
