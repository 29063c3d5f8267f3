"""Fault suite: a run killed with SIGKILL in the middle of the third of five merge steps, then resumed.

The resumed registry holds exactly one version per stage, only the final version carries aliases, the
final checkpoint and accuracy equal an uninterrupted run's with the same seed, and the Prefect server the
killed run left behind (measured: it outlives its parent) is stopped by the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.orphans import RECORD_DIR

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

# 5 sources -> stages 0..4; stages long enough (all target images, 30 epochs) that registrations, which run
# behind the stages, catch up before the kill
FIVE_STAGES = {"data.domains": 6, "finetune.epochs": 30, "data.target_train_frac": 1.0}
TARGET = "2025"


# each `grasp run` starts its own ephemeral Prefect API (the server a SIGKILL orphans), whatever the session set
ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def grasp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=ENV)


def registry(ws: Path) -> list[dict]:
    from flows.tracking import Tracker

    return Tracker(ws).versions(f"grasp-{TARGET}")


def registered(ws: Path) -> int:
    """Versions in the workspace's MLflow database, read without MLflow (the run is writing to it)."""
    db = ws / "mlflow.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def kill_mid_stage(ws: Path, first_stage: int, min_versions: int) -> tuple[int, str]:
    """Start `grasp run --verbose` and SIGKILL it during the first epoch of a stage >= `first_stage` once at
    least `min_versions` versions are registered (registrations run behind the stages). Returns (pid, line)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--verbose"], cwd=ws, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        found = re.search(r"grasp stage (\d+): epoch 1/", line)
        if found and int(found.group(1)) >= first_stage and registered(ws) >= min_versions:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "never killed:\n" + "".join(seen[-30:])
    return proc.pid, line


def test_sigkill_mid_third_stage_then_resume_equals_an_uninterrupted_run(tmp_path, tmp_params):
    params = tmp_params(FIVE_STAGES)
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    for folder in (ref, ws):
        folder.mkdir()
        (folder / "params.yaml").write_text(params.read_text())

    done = grasp("run", "--quiet", "--json", "stages.json", cwd=ref)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {v["tags"]["stage"]: v["tags"]["checkpoint_sha256"] for v in registry(ref)}
    assert sorted(expected) == ["0", "1", "2", "3", "4"]

    pid, line = kill_mid_stage(ws, first_stage=2, min_versions=2)
    record = json.loads((ws / RECORD_DIR / f"{pid}.json").read_text())
    server = record["server_pid"]
    try:
        assert psutil.pid_exists(server), "the killed run's Prefect server should have outlived it"
        before = registry(ws)
        killed_in = int(re.search(r"grasp stage (\d+)", line).group(1))
        assert len(before) >= 2 and not any(v["aliases"] for v in before), "a killed run sets no alias"
        assert {int(v["tags"]["stage"]) for v in before} <= set(range(killed_in)), "the killed stage registered"

        resumed = grasp("run", "--json", "stages.json", cwd=ws)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed an interrupted run" in resumed.stdout
        assert "MLflow run(s) of a dead process KILLED" in resumed.stderr
        gone = not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
        assert gone, "the next run must stop the orphan server"
        assert not (ws / RECORD_DIR / f"{pid}.json").exists()
    finally:
        if psutil.pid_exists(server) and psutil.Process(server).create_time() == pytest.approx(
                record["server_started"], abs=1.0):
            psutil.Process(server).kill()

    after = registry(ws)
    stages = [v["tags"]["stage"] for v in after]
    assert sorted(stages) == ["0", "1", "2", "3", "4"], stages  # exactly one version per stage
    final = max(after, key=lambda v: int(v["version"]))
    assert final["tags"]["stage"] == "4"
    assert {v["version"]: v["aliases"] for v in after if v["aliases"]} == {final["version"]: ["challenger", "champion"]}
    chain, current = [], final["version"]
    by_version = {v["version"]: v for v in after}
    while current:
        chain.append(by_version[current]["tags"]["stage"])
        current = by_version[current]["tags"]["parent_version"]
    assert chain == ["4", "3", "2", "1", "0"]  # one unbroken lineage across the crash
    assert {v["tags"]["stage"]: v["tags"]["checkpoint_sha256"] for v in after} == expected
    ref_rows = json.loads((ref / "stages.json").read_text())
    new_rows = json.loads((ws / "stages.json").read_text())
    assert new_rows[-1]["test_accuracy"] == ref_rows[-1]["test_accuracy"]
