"""Fault suite: a real full disk. The MLflow artifact store is a 1 MiB tmpfs the test mounts and fills, so
every registration fails with ENOSPC: the run ends with one line naming the store (exit 75, transient), no
version is registered and no alias set; once the store has space again, the next run completes.

Needs root and `mount -t tmpfs` (a container may forbid it); the test is skipped, saying so, elsewhere.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]
ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def grasp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=ENV)


def _mount_full_tmpfs(folder: Path) -> None:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no real disk-full test")
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC


def test_a_full_artifact_store_fails_clearly_registers_nothing_and_the_next_run_completes(tmp_path, tmp_params):
    from flows.stores.tracking import Tracker

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(tmp_params().read_text())
    store = ws / "mlartifacts"
    _mount_full_tmpfs(store)
    try:
        full = grasp("run", "--quiet", cwd=ws)
        assert full.returncode == 75, full.stderr[-3000:]
        lines = full.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("grasp: error: "), full.stderr[-3000:]
        assert str(store) in lines[0] and "No space left" in lines[0], lines[0]  # names the store and the fault
        tracker = Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db")
        assert tracker.versions("grasp-2022") == [], "nothing half-registered"
        assert not (ws / ".grasp" / "run.lock").exists()
    finally:
        subprocess.run(["umount", str(store)], check=True)
    done = grasp("run", "--quiet", cwd=ws)
    assert done.returncode == 0, done.stderr[-3000:]
    versions = Tracker(ws, tracking_uri=f"sqlite:///{ws}/mlflow.db").versions("grasp-2022")
    assert sorted(v["tags"]["stage"] for v in versions) == ["0", "1"]
    assert any("champion" in v["aliases"] for v in versions)
