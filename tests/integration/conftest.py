"""Integration fixtures: real Prefect (one test harness per session), MLflow on SQLite, DVC, GX."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="grasp-prefect-home-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME))  # before prefect is imported anywhere
# the migrated empty Prefect/MLflow databases every test workspace starts from (flows/local_stores.py):
# made by the session's first run, never the user's own ~/.cache/grasp
os.environ.setdefault("GRASP_CACHE", tempfile.mkdtemp(prefix="grasp-cache-"))
from flows.settings import apply_defaults  # noqa: E402

apply_defaults(_HOME)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (about 10 s once)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(
            updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
