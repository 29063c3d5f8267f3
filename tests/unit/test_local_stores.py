"""flows.local_stores: a user's migrated empty database seeds new workspaces, never overwrites one."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from flows import local_stores


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRASP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _db(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("PRAGMA journal_mode=WAL")  # as the tools keep them: the backup must see WAL pages too
        con.execute("CREATE TABLE t (v TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [(r,) for r in rows])
    return path


def _rows(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as con:
        return [r[0] for r in con.execute("SELECT v FROM t ORDER BY v")]


def test_template_named_by_tool_and_installed_version(cache: Path) -> None:
    from importlib.metadata import version

    assert local_stores.template_path("mlflow") == cache / f"mlflow-{version('mlflow')}.db"
    assert local_stores.template_path("prefect") == cache / f"prefect-{version('prefect')}.db"


def test_save_then_seed_copies_the_schema_and_rows(tmp_path: Path) -> None:
    made = _db(tmp_path / "a" / "prefect.db", ["block-type"])
    local_stores.save_template(made, "prefect")
    new = tmp_path / "b" / "home" / "prefect.db"
    assert local_stores.seed(new, "prefect") is True
    assert _rows(new) == ["block-type"]


def test_seed_never_overwrites_and_needs_a_template(tmp_path: Path) -> None:
    new = tmp_path / "w" / "mlflow.db"
    assert local_stores.seed(new, "mlflow") is False  # no template yet
    assert not new.exists()
    local_stores.save_template(_db(tmp_path / "t.db", ["schema"]), "mlflow")
    existing = _db(tmp_path / "x" / "mlflow.db", ["my runs"])
    assert local_stores.seed(existing, "mlflow") is False
    assert _rows(existing) == ["my runs"]


def test_first_template_is_kept(tmp_path: Path) -> None:
    local_stores.save_template(_db(tmp_path / "1.db", ["first"]), "mlflow")
    local_stores.save_template(_db(tmp_path / "2.db", ["second"]), "mlflow")
    assert _rows(local_stores.template_path("mlflow")) == ["first"]
    assert [p.name for p in local_stores.cache_dir().iterdir()] == [local_stores.template_path("mlflow").name]


def test_unwritable_cache_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GRASP_CACHE", str(blocker / "cache"))
    local_stores.save_template(_db(tmp_path / "1.db", ["x"]), "mlflow")  # best effort: no exception
    assert local_stores.seed(tmp_path / "new.db", "mlflow") is False


SETUP = (("t", "v"),)


def test_holds_template_setup_needs_every_template_value(tmp_path: Path) -> None:
    local_stores.save_template(_db(tmp_path / "made.db", ["rev-1", "block-a"]), "prefect")
    assert local_stores.holds_template_setup(_db(tmp_path / "same.db", ["rev-1", "block-a"]), "prefect", SETUP)
    assert local_stores.holds_template_setup(_db(tmp_path / "more.db", ["rev-1", "block-a", "run"]), "prefect", SETUP)
    assert not local_stores.holds_template_setup(_db(tmp_path / "old.db", ["rev-0", "block-a"]), "prefect", SETUP)
    assert not local_stores.holds_template_setup(tmp_path / "missing.db", "prefect", SETUP)
    assert not local_stores.holds_template_setup(_db(tmp_path / "other.db", ["x"]), "prefect", (("absent", "v"),))


def test_holds_template_setup_false_without_a_template(tmp_path: Path) -> None:
    assert not local_stores.holds_template_setup(_db(tmp_path / "db.db", ["rev-1"]), "prefect", SETUP)
