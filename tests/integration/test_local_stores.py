"""The local Prefect API server of `grasp run` and the seeded stores, with the real Prefect and MLflow."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path

import psutil
import pytest

from flows import local_stores
from flows.api_server import LocalApiServer

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRASP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _boot(ws: Path, monkeypatch: pytest.MonkeyPatch) -> LocalApiServer:
    monkeypatch.setenv("PREFECT_HOME", str(ws / ".cache" / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (ws / ".cache" / "prefect").mkdir(parents=True)
    server = LocalApiServer(ws)
    server.start()
    return server


@pytest.mark.slow
def test_server_boots_records_seeds_and_stops(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _boot(tmp_path / "a", monkeypatch)
    try:
        assert os.environ["PREFECT_API_URL"] == first.api_url
        record = json.loads(next((tmp_path / "a" / ".grasp" / "servers").glob("*.json")).read_text())
        assert record["server_pid"] == first.proc.pid  # recorded before it is ready: a kill now is reaped later
        assert first.fresh_db and not first.setup_skipped  # no template yet: Prefect's own start-up setup runs
        first.wait_ready()
        with urllib.request.urlopen(f"{first.api_url}/health", timeout=5) as reply:
            assert reply.status == 200
    finally:
        first.stop()
    assert not psutil.pid_exists(first.proc.pid) or psutil.Process(first.proc.pid).status() == psutil.STATUS_ZOMBIE
    assert list((tmp_path / "a" / ".grasp" / "servers").glob("*.json")) == []
    template = local_stores.template_path("prefect")
    with closing(sqlite3.connect(template)) as con:  # migrated schema, no run of workspace a
        assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 0

    second = _boot(tmp_path / "b", monkeypatch)
    try:
        assert not second.fresh_db  # the database was there, copied from the template, before the server ran
        assert second.setup_skipped  # it holds the template's migrations and block schemas: no setup again
        second.wait_ready()
        request = urllib.request.Request(f"{second.api_url}/block_types/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:  # the built-in block types, from the template
            assert len(json.loads(reply.read())) > 0
        code = ("from prefect import flow\n"
                "@flow(name='seeded-db-check')\n"
                "def hello():\n    return 7\n"
                "assert hello() == 7\n")
        # a fresh process: this one's Prefect settings may name the session's test API
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PREFECT_API_URL": second.api_url},
                       check=True, capture_output=True, timeout=300)
    finally:
        second.stop()
    with closing(sqlite3.connect(tmp_path / "b" / ".cache" / "prefect" / "prefect.db")) as con:
        assert con.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 1
    with closing(sqlite3.connect(template)) as con:
        assert con.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 0


def test_mlflow_store_seeded_from_the_first_one(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = Tracker(tmp_path / "a")
    assert local_stores.template_path("mlflow").is_file()
    first.client.create_registered_model("only-in-a")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    second = Tracker(tmp_path / "b")
    assert second.client.search_registered_models() == []  # the template holds no run or model of a
    names = {e.name: e.artifact_location for e in second.client.search_experiments()}
    assert names["grasp"] == (tmp_path / "b" / "mlartifacts").resolve().as_uri()
    assert names["Default"] == str(tmp_path / "b" / "mlruns" / "0")  # where MLflow itself would put it here
