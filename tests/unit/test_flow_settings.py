"""flows.settings.without_heartbeats: the flow engine sees no heartbeat inside, Prefect's default after."""

from __future__ import annotations

from prefect import flow
from prefect.flow_engine import FlowRunEngine
from prefect.settings import get_current_settings

from flows.settings import without_heartbeats


@flow(name="heartbeat-probe")
def _probe() -> None:
    return None


def _engine_heartbeat() -> int | None:
    return FlowRunEngine(flow=_probe).heartbeat_seconds  # what the engine reads before starting its thread


def test_flows_started_inside_have_no_heartbeat_and_the_default_comes_back() -> None:
    before = _engine_heartbeat()
    assert before is not None and before > 0  # Prefect's default would start a heartbeat thread
    with without_heartbeats():
        assert _engine_heartbeat() is None
        with without_heartbeats():  # nested, as train_sources inside `grasp run`
            assert _engine_heartbeat() is None
        assert _engine_heartbeat() is None  # the inner exit does not turn it back on
    assert _engine_heartbeat() == before
    assert get_current_settings().flows.heartbeat_frequency == before
