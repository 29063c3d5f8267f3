"""How a registered mean start (stage 0 of `transfer.start: mean`) counts in the merge plan: it stands for the
order's first source, depends on every source it averages, and a run it began can be resumed."""

from __future__ import annotations

import json

from flows.pipeline.plan import chain_shas, interrupted_head

MEMBERS = [{"domain": d, "sha256": f"sha-{d}", "md5": f"md5-{d}"} for d in ("b", "a", "c")]  # merge order b, a, c
MEAN_TAGS = {"stage": "0", "source_domain": "mean", "source_sha256": "sha-mean", "parent_version": "",
             "params_sha256": "p", "start_chosen": "mean", "start_sources": json.dumps(MEMBERS)}
STAGE1_TAGS = {"stage": "1", "source_domain": "a", "source_sha256": "sha-a", "parent_version": "1",
               "params_sha256": "p"}


def _area(*domains: str) -> set[str]:
    return {f"sha-{d}" for d in domains}


class FakeTracker:
    """The two registry reads `interrupted_head` makes: versions 1 (the mean) and 2 of a killed run."""

    def versions(self, model_name):
        return [{"version": "1", "run_id": "r1", "aliases": [], "tags": MEAN_TAGS},
                {"version": "2", "run_id": "r2", "aliases": [], "tags": STAGE1_TAGS}]

    def run_states(self):
        return {"r1": ("FINISHED", "parent"), "r2": ("FINISHED", "parent"), "parent": ("KILLED", "")}


def test_the_mean_stands_for_the_orders_first_source_and_holds_them_all():
    chain = [STAGE1_TAGS, MEAN_TAGS]
    assert chain_shas(chain) == {"sha-b", "sha-a"}  # c is still to merge as a stage of its own
    assert chain_shas(chain, held=True) == {"sha-a", "sha-b", "sha-c"}


def test_a_killed_run_that_began_with_the_mean_is_resumed_only_with_all_its_sources():
    assert interrupted_head(FakeTracker(), "m", _area("a", "b", "c"), None, False, "p") == "2"
    assert interrupted_head(FakeTracker(), "m", _area("a", "b"), None, False, "p") is None  # c averaged, gone
    assert interrupted_head(FakeTracker(), "m", _area("a", "b", "c"), None, False, "other params") is None


def test_a_resumed_runs_remaining_sources_are_held_by_its_mean_and_an_incremental_new_one_is_not():
    from flows.pipeline.start import start_held_shas
    from grasp_core.config import Config
    from grasp_core.start import merge_config

    held = start_held_shas([STAGE1_TAGS, MEAN_TAGS])  # what plan_merge gives the stages (MergePlan.held_by_start)
    assert held == {"sha-a", "sha-b", "sha-c"}
    assert merge_config(Config(), "sha-c" in held).transfer.policy == "none"  # resume: c is in the mean already
    assert merge_config(Config(), "sha-d" in held).transfer.policy == Config().transfer.policy  # a new source
    assert start_held_shas([STAGE1_TAGS]) == frozenset()  # no mean start in the lineage: nothing is held
