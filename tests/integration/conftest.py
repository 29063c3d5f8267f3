"""Integration fixtures: real Prefect (one test harness per session), MLflow on SQLite, DVC, GX."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="grasp-prefect-home-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME))  # before prefect is imported anywhere
from flows.runtime.settings import apply_defaults  # noqa: E402

apply_defaults(_HOME)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (about 10 s once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
