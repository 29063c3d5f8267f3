"""flows.runtime.settings.prefect_api_in_background: `grasp run` brings Prefect's API up in a thread while it
imports."""

from __future__ import annotations

import pytest

from flows.runtime.settings import prefect_api_in_background

pytestmark = pytest.mark.integration


def test_the_boot_hands_prefects_own_error_to_the_caller(monkeypatch):
    """No API URL and Prefect's ephemeral mode off: Prefect refuses in the boot thread; the caller gets it."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
    boot = prefect_api_in_background()
    with pytest.raises(ValueError, match="No Prefect API URL provided"):
        boot()
    boot.quietly()  # the error path's wait returns without raising
