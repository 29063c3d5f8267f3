"""A corrupt SQLite store (MLflow's `mlflow.db`, Prefect's `prefect.db`) fails as one line naming the file and
how to recover, before a tool opens it and fails deep inside SQLAlchemy with a traceback."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from grasp_core.errors import GraspError

SQLITE_MAGIC = b"SQLite format 3\x00"
MLFLOW_RECOVERY = ("restore it from a backup, or move it aside (`mv mlflow.db mlflow.db.corrupt`) to start a new "
                   "registry; checkpoints and DVC-tracked data are untouched")
PREFECT_RECOVERY = ("delete it (it holds only Prefect's run history; the next run recreates it), or restore it "
                    "from a backup")


class StoreCorruptError(GraspError):
    """A local SQLite store is not a readable database."""


def check_sqlite(db: Path, recovery: str) -> None:
    """Raise StoreCorruptError when `db` exists but is not a readable SQLite database (header, schema, and
    SQLite's `quick_check` of its pages)."""
    if not db.is_file() or db.stat().st_size == 0:
        return  # missing or empty: the tool creates it
    with open(db, "rb") as fh:
        magic = fh.read(len(SQLITE_MAGIC))
    problem = "" if magic == SQLITE_MAGIC else "not an SQLite database (bad header)"
    if not problem:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
                row = con.execute("PRAGMA quick_check(1)").fetchone()
            problem = "" if row and row[0] == "ok" else f"damaged ({row[0] if row else 'no answer'})"
        except sqlite3.DatabaseError as err:
            if "locked" in str(err):
                return  # busy, not corrupt: the tool's own retries handle it
            problem = f"damaged ({err})"
    if problem:
        problem = " ".join(problem.split())  # SQLite's report spans lines; the error stays one line
        raise StoreCorruptError(f"{db}: {problem}; {recovery}")
