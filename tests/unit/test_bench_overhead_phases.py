"""`grasp bench overhead --phases`: which phases run, in their fixed order, with `cold` required."""

from __future__ import annotations

import pytest

from flows.bench.overhead import PHASES, parse_phases


def test_phases_run_in_their_own_order_whatever_the_list_order():
    assert parse_phases("warm, cold") == ("cold", "warm")
    assert parse_phases(",".join(PHASES)) == PHASES
    assert parse_phases("cold") == ("cold",)


@pytest.mark.parametrize(("text", "why"), [("warm", "'cold' is required"), ("cold,hot", "unknown phase 'hot'")])
def test_a_bad_phase_list_is_refused_with_the_reason(text: str, why: str):
    with pytest.raises(ValueError, match=why):
        parse_phases(text)
