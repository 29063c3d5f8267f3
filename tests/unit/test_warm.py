"""flows.runtime.warm.warm_while: the flow's one-off imports, paid only while Prefect's server still boots."""

from __future__ import annotations

from flows.runtime.warm import warm_while


def _steps(ran: list[str]):
    def first() -> None:
        ran.append("first")

    def broken() -> None:
        ran.append("broken")
        raise ImportError("no such module")

    def last() -> None:
        ran.append("last")

    return (first, broken, last)


def test_every_step_runs_while_the_server_boots_and_a_failing_one_is_skipped():
    ran: list[str] = []
    assert warm_while(lambda: True, _steps(ran)) == ["first", "last"]
    assert ran == ["first", "broken", "last"]


def test_no_step_starts_once_the_server_answers():
    ran: list[str] = []
    answers = iter([True, False])  # booting for the first step only
    assert warm_while(lambda: next(answers), _steps(ran)) == ["first"]
    assert ran == ["first"]


def test_a_ready_server_costs_no_import():
    ran: list[str] = []
    assert warm_while(lambda: False, _steps(ran)) == [] and ran == []
    assert warm_while(lambda: False) == []  # the real steps too: not one import
