"""Fault suite: a run killed with SIGKILL (or stopped with SIGTERM or SIGINT) in the middle of the third of five
merge steps, then resumed.

The resumed registry holds exactly one version per stage, only the final version carries aliases, the
final checkpoint and accuracy equal an uninterrupted run's with the same seed.

No clock decides when the signal is sent: it goes on a line the run prints (an epoch of stage 2). Each stage
starts only once the previous stage's registration has finished (flows.pipeline._stages), so stages 0 and 1
are registered by then; the stage still has 29 epochs to go, so the signal lands inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

# 5 sources -> stages 0..4; stages long enough (all target images, 30 epochs) that a signal sent on the first
# epoch line of a stage lands inside that stage
FIVE_STAGES = {"data.domains": 6, "finetune.epochs": 30, "data.target_train_frac": 1.0}
TARGET = "2025"


# each `grasp run` starts a Prefect server of its own (`prefect server start`, a child of the run), whatever the
# session set
ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def grasp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=ENV)


def registry(ws: Path) -> list[dict]:
    from flows.stores.tracking import Tracker

    return Tracker(ws).versions(f"grasp-{TARGET}")


def kill_mid_stage(ws: Path, first_stage: int, sig: signal.Signals = signal.SIGKILL) -> tuple[int, str, list[int], str]:
    """Start `grasp run --verbose` and send `sig` on the first epoch line of stage `first_stage` (an event the
    run prints, not a delay). Returns (pid, the line it was sent on, the PIDs of its children then, the rest of
    its stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--verbose"], cwd=ws, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    assert proc.stderr is not None
    seen, children = [], []
    for line in proc.stderr:
        seen.append(line)
        found = re.search(r"grasp stage (\d+): epoch \d+/", line)
        if found and int(found.group(1)) >= first_stage:
            children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            os.kill(proc.pid, sig)
            break
    rest = proc.stderr.read() if sig != signal.SIGKILL else ""
    proc.wait(timeout=600)  # a hang guard only: the unwind waits for the running registration
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + sig
    assert proc.returncode == expected, f"exit {proc.returncode}:\n" + "".join(seen[-30:]) + rest[-3000:]
    return proc.pid, line, children, rest


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """An uninterrupted run with the same seed: (its folder, stage -> checkpoint sha256)."""
    from tests.conftest import TINY_PARAMS

    ref = tmp_path_factory.mktemp("ref")
    raw = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    for key, value in FIVE_STAGES.items():
        section, leaf = key.split(".")
        raw.setdefault(section, {})[leaf] = value
    (ref / "params.yaml").write_text(yaml.safe_dump(raw))
    done = grasp("run", "--quiet", "--json", "stages.json", cwd=ref)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {v["tags"]["stage"]: v["tags"]["checkpoint_sha256"] for v in registry(ref)}
    assert sorted(expected) == ["0", "1", "2", "3", "4"]
    return ref, expected


def test_sigkill_mid_third_stage_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    ref, expected = reference
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text((ref / "params.yaml").read_text())

    _, line, children, _ = kill_mid_stage(ws, first_stage=2)
    try:
        before = registry(ws)
        killed_in = int(re.search(r"grasp stage (\d+)", line).group(1))
        assert len(before) >= 2 and not any(v["aliases"] for v in before), "a killed run sets no alias"
        assert {int(v["tags"]["stage"]) for v in before} <= set(range(killed_in)), "the killed stage registered"

        resumed = grasp("run", "--json", "stages.json", cwd=ws)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed an interrupted run" in resumed.stdout
        assert "MLflow run(s) of a dead process KILLED" in resumed.stderr
    finally:
        for child in children:  # what the killed run left running (Prefect's temporary server), by its own PID
            with contextlib.suppress(psutil.Error):
                psutil.Process(child).kill()

    assert_resumed_exactly(ws, ref, expected)


def assert_resumed_exactly(ws: Path, ref: Path, expected: dict[str, str]) -> None:
    """One version per stage, one unbroken lineage, aliases on the last, and the reference run's bytes."""
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_stage_stops_cleanly_then_resume_equals_an_uninterrupted_run(sig, tmp_path, reference):
    """SIGTERM (a scheduler, `kill`) or SIGINT (Ctrl-C) mid stage 2: children stopped, the MLflow parent run
    KILLED, the lock released, exit 128 + signal, nothing of the stopped stage written; then an exact resume."""
    import mlflow

    ref, expected = reference
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text((ref / "params.yaml").read_text())
    _, line, children, stderr = kill_mid_stage(ws, first_stage=2, sig=sig)
    assert children, "the run had children (its Prefect server at least) when it was signalled"
    alive = [c for c in children if psutil.pid_exists(c) and psutil.Process(c).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"children left running: {alive}"
    assert f"got {sig.name}" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (ws / ".grasp" / "run.lock").exists(), "the lock is released"
    client = mlflow.MlflowClient(f"sqlite:///{ws}/mlflow.db")
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 "attributes.run_name LIKE 'grasp-%'")
    assert [r.info.status for r in parents] == ["KILLED"], [(r.info.run_name, r.info.status) for r in parents]
    before = registry(ws)
    assert sorted(v["tags"]["stage"] for v in before) == ["0", "1"], "stages 0-1 registered, the stopped one not"
    assert not any(v["aliases"] for v in before), "a stopped run sets no alias"
    targets = ws / "checkpoints" / "targets"
    assert not [p.name for p in targets.rglob("*") if "stage02" in p.name or p.name.endswith(".tmp")], \
        "the stopped stage left a checkpoint or a temporary file"

    resumed = grasp("run", "--json", "stages.json", cwd=ws)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed an interrupted run" in resumed.stdout
    assert_resumed_exactly(ws, ref, expected)
