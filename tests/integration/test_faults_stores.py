"""Fault suite: a corrupted `mlflow.db` or Prefect database fails as one line naming the file and the way to
recover (exit 2), before any tool opens it; nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the run starts its own local server


def grasp(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env or ENV)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _damaged_sqlite(path: Path) -> None:
    """A real SQLite database whose pages after the header are overwritten (a disk fault, a bad copy)."""
    import sqlite3

    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (x TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    blob = bytearray(path.read_bytes())
    blob[4096:] = b"\xff" * (len(blob) - 4096)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_corrupt_mlflow_db_is_one_line_naming_it_and_the_recovery(damage, tmp_path):
    db = tmp_path / "mlflow.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database at all" * 100)
    else:
        _damaged_sqlite(db)
    before = _tree(tmp_path)
    done = grasp("status", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"grasp: error: {db}: "), done.stderr[-2000:]
    assert "mv mlflow.db mlflow.db.corrupt" in lines[0]
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith(".cache/")} == before


def test_a_corrupt_prefect_db_is_one_line_naming_it_and_the_recovery(tmp_path, tmp_params):
    (tmp_path / "ws").mkdir()
    ws = tmp_path / "ws"
    (ws / "params.yaml").write_text(tmp_params().read_text())
    home = ws / ".cache" / "prefect"
    home.mkdir(parents=True)
    (home / "prefect.db").write_bytes(b"\x00garbage" * 512)
    done = grasp("run", "--quiet", cwd=ws, env={**ENV, "PREFECT_HOME": str(home)})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"grasp: error: {home / 'prefect.db'}: "), done.stderr[-2000:]
    assert "delete it" in lines[0]
    assert not (ws / "data").exists() and not (ws / "mlflow.db").exists()  # nothing ran
    assert not (ws / ".grasp" / "run.lock").exists()
