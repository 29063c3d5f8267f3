"""Empty, migrated SQLite databases kept per user, so a new workspace skips its tools' schema migrations.

Prefect's server and MLflow's SQLite store build their schema on first use: ~7 s for Prefect's API
database and ~2.5 s for MLflow's on these 2 cores, paid by every new workspace. Both schemas depend only
on the tool's version, so the first store a user creates is copied (schema and built-in rows only, before
any run is written) to `$GRASP_CACHE` (default `~/.cache/grasp`) as `<tool>-<version>.db`; a workspace
whose database does not exist yet starts from that copy, and the tool's own migration check then finds
nothing to do. Delete the folder to go back to fresh migrations. `holds_template_setup` tells a caller that a
database already holds all of that (so the local Prefect server can skip its start-up setup).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from importlib.metadata import version
from pathlib import Path

_log = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("GRASP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grasp"
    return Path(base)


def template_path(tool: str) -> Path:
    """Where the empty migrated database of `tool` (a distribution name: prefect, mlflow) is kept."""
    return cache_dir() / f"{tool}-{version(tool)}.db"


def seed(db: Path, tool: str) -> bool:
    """Start a missing `db` from the user's template of `tool`; True when it did. Never raises."""
    template = template_path(tool)
    if db.exists() or not template.is_file():
        return False
    tmp = None
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.")
        os.close(fd)
        shutil.copyfile(template, tmp)
        os.replace(tmp, db)  # atomic: a concurrent reader sees no database or the whole template
    except OSError as err:
        _log.debug("could not seed %s from %s: %s", db, template, err)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        return False
    return True


def holds_template_setup(db: Path, tool: str, columns: tuple[tuple[str, str], ...]) -> bool:
    """True when `db` holds everything its tool's setup put in the template: for each (table, column), every
    value of the template's column is also in `db`'s (a schema revision, the built-in rows). Read-only;
    False when either database is missing or unreadable, so a caller falls back to the tool's own setup."""
    template = template_path(tool)
    if not db.is_file() or not template.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{template}?mode=ro", uri=True)) as tpl, \
                closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            for table, column in columns:
                query = f'SELECT DISTINCT "{column}" FROM "{table}"'  # names: the caller's constants
                wanted = {row[0] for row in tpl.execute(query)}
                if not wanted or not wanted <= {row[0] for row in con.execute(query)}:
                    return False
    except sqlite3.Error as err:
        _log.debug("could not compare %s with the %s template: %s", db, tool, err)
        return False
    return True


def save_template(db: Path, tool: str) -> None:
    """Keep a consistent copy of `db` (just migrated, nothing written yet) as the template of `tool`.

    Call only for a database this process created from nothing and before any run is written to it.
    Uses SQLite's online backup, so a server holding the database open is fine. Never raises.
    """
    template = template_path(tool)
    if template.is_file() or not db.is_file():
        return
    tmp = None
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=f".{template.name}.")
        os.close(fd)
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as src, closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, template)
    except (OSError, sqlite3.Error) as err:
        _log.debug("could not keep %s as the %s template: %s", db, tool, err)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
