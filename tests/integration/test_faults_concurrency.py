"""Fault suite: two `grasp run` started at once on one workspace, and determinism of a whole run.

Concurrency: one run holds the workspace lock; the other is refused (exit 75, busy) with a message naming
the owner's PID and age, registers nothing, and the registry and DVC stay consistent. The overlap is made
certain, not hoped for: the first run and its children are paused (SIGSTOP) once its lock file names it, the
second runs against it and must leave every file of the workspace as it found it, then the first is resumed
(SIGCONT). Determinism: the same seed and
config in two fresh workspaces give identical checkpoint hashes (base, sources) and accuracies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def _start(ws: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *args], cwd=ws, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _pause_tree(pid: int) -> list[int]:
    """SIGSTOP `pid`, then its descendants until no new one appears (a stopped parent spawns none, but a child
    may still have been starting one). Returns the stopped PIDs, parent first."""
    os.kill(pid, signal.SIGSTOP)
    stopped = [pid]
    while new := [c.pid for c in psutil.Process(pid).children(recursive=True) if c.pid not in stopped]:
        for child in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
        stopped.extend(new)
    return stopped


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: the before/after picture of "nothing written"."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_two_runs_at_once_one_is_refused_and_stores_stay_consistent(tmp_path, tmp_params):
    from flows.runtime.lock import LOCK_NAME, read_owner
    from flows.stores.tracking import Tracker

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(tmp_params().read_text())
    first = _start(ws, "--quiet")
    while (owner := read_owner(ws / LOCK_NAME)) is None or owner.get("pid") != first.pid:
        assert first.poll() is None, first.communicate()[1][-2000:]  # waits for an event: the lock names it
        time.sleep(0.05)  # polling interval only; nothing has to happen before it ends
    paused = _pause_tree(first.pid)  # it cannot release the lock while the second one runs
    try:
        # stopped now, so this cannot change: the overlap is certain, not hoped for
        assert (read_owner(ws / LOCK_NAME) or {}).get("pid") == first.pid, "the first run ended before it was paused"
        frozen = _tree(ws)  # the first run and its children are stopped: only the second run could change it
        second = _start(ws, "--quiet")
        refused_out, refused_err = second.communicate(timeout=900)
        assert _tree(ws) == frozen, "the refused run wrote into the workspace"
    finally:
        for pid in reversed(paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    out, err = first.communicate(timeout=900)
    codes = [first.returncode, second.returncode]
    assert codes == [0, 75], (codes, err[-2000:], refused_err[-2000:])
    assert re.search(r"another grasp run \(pid \d+, started \d+ s ago\) holds this workspace", refused_err), \
        refused_err
    assert "Traceback" not in refused_err

    versions = Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db").versions("grasp-2022")
    assert [v["tags"]["stage"] for v in versions] == ["0", "1"]  # one lineage, one version per step
    assert versions[1]["tags"]["parent_version"] == versions[0]["version"]
    data_md5 = yaml.safe_load((ws / "data.dvc").read_text())["outs"][0]["md5"]
    assert {v["tags"]["dataset_dvc_md5"] for v in versions} == {data_md5}
    for check in (["status"], ["status", "--cloud"]):  # workspace == .dvc files; cache == remote
        status = subprocess.run([sys.executable, "-m", "dvc", *check, "data.dvc", "checkpoints/sources.dvc"], cwd=ws,
                                capture_output=True, text=True)
        assert status.returncode == 0 and ("up to date" in status.stdout or "in sync" in status.stdout), \
            status.stdout + status.stderr
    assert not (ws / ".grasp" / "run.lock").exists(), "the lock is released"


def _digests(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws / "checkpoints").rglob("*.safetensors"))}


def test_same_seed_and_config_give_identical_checkpoints_and_accuracies(tmp_path, tmp_params):
    params = tmp_params()
    results = []
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "params.yaml").write_text(params.read_text())
        done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--engine", "core", "--quiet", "--json",
                               "out.json"], cwd=ws, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = json.loads((ws / "out.json").read_text())
        results.append(({r["method"]: (r["test_accuracy"], r["val_accuracy"]) for r in rows}, _digests(ws)))
    (acc_a, ckpt_a), (acc_b, ckpt_b) = results
    assert len(ckpt_a) >= 3  # the base and one source per source domain
    assert ckpt_a == ckpt_b
    assert acc_a == acc_b
