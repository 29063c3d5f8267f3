"""flows.runtime.settings.prefect_api_in_background: `grasp run` brings Prefect's API up in a thread while it
imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: Prefect reads its settings once per process, and an earlier test of the session
# (its test harness, a served run) leaves an API URL behind, so in-process the boot would find a server.
BOOT = textwrap.dedent("""
    from flows.runtime.settings import prefect_api_in_background

    boot = prefect_api_in_background()
    try:
        boot()
    except ValueError as error:
        boot.quietly()  # the error path's wait returns without raising
        print("refused:", error)
    else:
        raise SystemExit("the boot did not raise")
""")


def test_the_boot_hands_prefects_own_error_to_the_caller(tmp_path):
    """No API URL and Prefect's ephemeral mode off: Prefect refuses in the boot thread; the caller gets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_EPHEMERAL_ENABLED="false", PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run([sys.executable, "-c", BOOT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No Prefect API URL provided" in done.stdout
