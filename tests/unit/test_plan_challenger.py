"""`plan.decide` after an incremental run: the challenger that awaits promotion is where the next run continues,
so the same new sources are never merged into the champion twice (the flow's plan and the CLI's nothing-new
check read this one decision)."""

from __future__ import annotations

import pytest

from flows.pipeline.plan import decide, holds_all_line, nothing_to_merge, plan_merge
from tests.unit.test_up_to_date import Registry, _tags


def _pending() -> Registry:
    """Champion v2 holds sources a and b; a finished incremental run merged c as v3, the challenger."""
    registry = Registry()
    registry.versions_.append({"version": "3", "run_id": "r3", "aliases": ["challenger"], "tags": _tags(2, "c", "2")})
    registry.states.update(r3=("FINISHED", "p2"), p2=("FINISHED", ""))
    return registry


class Source:  # what plan_merge reads of an area source
    def __init__(self, sha: str) -> None:
        self.checkpoint = type("Ckpt", (), {"sha256": sha})()


def test_with_nothing_newer_than_the_challenger_nothing_is_merged_and_the_plan_agrees(tmp_path):
    registry = _pending()
    assert nothing_to_merge(registry, "m", {"a", "b", "c"}, "p") == ("2", "3", 3)
    plan = plan_merge(registry, "m", [Source("a"), Source("b"), Source("c")], tmp_path,  # type: ignore[list-item]
                      params_sha256="p")
    assert (plan.to_merge, plan.parent_version, plan.champion, plan.resumed) == ([], "3", "2", False)


def test_a_further_source_continues_from_the_challenger():
    decision = decide(_pending(), "m", {"a", "b", "c", "d"}, False, "p")
    assert (decision.version, decision.champion, decision.resumed) == ("3", "2", False)
    assert decision.awaits_promotion and decision.unmerged({"a", "b", "c", "d"}) == {"d"}


@pytest.mark.parametrize("why", ["other params", "source gone", "not newer", "live run"])
def test_a_challenger_that_does_not_qualify_leaves_the_champion_as_today(why):
    registry, area = _pending(), {"a", "b", "c"}
    if why == "other params":
        registry.versions_[2]["tags"]["params_sha256"] = "q"
    elif why == "source gone":
        area = {"a", "b"}  # c left the area: the champion holds every source there is
    elif why == "not newer":  # the champion was promoted past it (or the run made both aliases)
        registry.versions_[1]["aliases"], registry.versions_[2]["aliases"] = ["challenger"], ["champion"]
    else:
        registry.states["p2"] = ("RUNNING", "")  # a run of a live process (another host) is not over
    decision = decide(registry, "m", area, False, "p")
    expected = "3" if why == "not newer" else "2"
    assert (decision.version, decision.champion, decision.awaits_promotion) == (expected, expected, False)


def test_a_challenger_whose_run_died_after_the_alias_still_counts():
    """The alias moves last (or from the run that resumed a killed one): every stage it needs is registered."""
    registry = _pending()
    registry.states["p2"] = ("KILLED", "")
    assert nothing_to_merge(registry, "m", {"a", "b", "c"}, "p") == ("2", "3", 3)


def test_an_interrupted_run_on_top_of_the_challenger_is_resumed():
    registry = _pending()
    registry.versions_.append({"version": "4", "run_id": "r4", "aliases": [], "tags": _tags(3, "d", "3")})
    registry.states.update(r4=("FINISHED", "p3"), p3=("KILLED", ""))
    decision = decide(registry, "m", {"a", "b", "c", "d"}, False, "p")
    assert (decision.version, decision.resumed, decision.awaits_promotion) == ("4", True, False)
    assert nothing_to_merge(registry, "m", {"a", "b", "c", "d"}, "p") is None  # the flow resumes it


def test_a_killed_run_the_challenger_already_continued_is_not_resumed_again():
    """v3 was registered by a run that died; the next run resumed it, merged d as v4 and finished (challenger).
    Continuing from the champion would find v3 again and merge d a second time."""
    registry = Registry()
    registry.versions_ += [{"version": "3", "run_id": "r3", "aliases": [], "tags": _tags(2, "c", "2")},
                           {"version": "4", "run_id": "r4", "aliases": ["challenger"], "tags": _tags(3, "d", "3")}]
    registry.states.update(r3=("FINISHED", "p2"), p2=("KILLED", ""), r4=("FINISHED", "p3"), p3=("FINISHED", ""))
    assert nothing_to_merge(registry, "m", {"a", "b", "c", "d"}, "p") == ("2", "4", 4)


def test_full_starts_from_scratch_as_today():
    decision = decide(_pending(), "m", {"a", "b", "c"}, True, "p")
    assert (decision.version, decision.champion, decision.chain) == ("", "", [])


def test_the_line_names_both_versions_and_the_command():
    line = holds_all_line("2", "3", 3, "grasp-2021")
    assert line == ("nothing new: champion v2 of grasp-2021; challenger v3 already holds all 3 sources and awaits "
                    "promotion: grasp promote")
    assert holds_all_line("2", "2", 2) == "nothing new: champion v2 already holds all 2 sources"
