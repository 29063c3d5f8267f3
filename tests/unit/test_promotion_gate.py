"""The promotion gate decides on validation accuracy; test accuracy is reported beside it, never gating."""

from __future__ import annotations

from pathlib import Path

from flows.pipeline.promotion import _decision, compare_and_set_alias
from grasp_core.config import Config, replace


def test_the_gate_reads_validation_not_test(tmp_path: Path):
    # candidate: worse on val, better on test -> refused; then better on val, worse on test -> promoted
    refused = _decision(tmp_path, Config(), "grasp-x", "2", "1", {"2": (0.70, 0.99, 1.0), "1": (0.80, 0.50, 1.0)})
    assert refused.action == "refused" and "val accuracy 0.7000 < champion v1 0.8000" in refused.message
    assert (refused.candidate_test_accuracy, refused.champion_test_accuracy) == (0.99, 0.50)  # reported
    promoted = _decision(tmp_path, Config(), "grasp-x", "2", "1", {"2": (0.81, 0.10, 1.0), "1": (0.80, 0.90, 1.0)})
    assert promoted.promoted and "val accuracy 0.8100 >= champion v1 0.8000" in promoted.message


def test_tolerance_applies_to_validation_accuracy(tmp_path: Path):
    cfg = replace(Config(), promote__tolerance=0.05)
    within = _decision(tmp_path, cfg, "grasp-x", "2", "1", {"2": (0.76, 0.0, 1.0), "1": (0.80, 1.0, 1.0)})
    beyond = _decision(tmp_path, cfg, "grasp-x", "2", "1", {"2": (0.74, 1.0, 1.0), "1": (0.80, 0.0, 1.0)})
    assert within.promoted and beyond.action == "refused"


class _Aliases:
    """A registry stand-in holding only aliases (compare-and-set logic; the MLflow path is an integration test)."""

    def __init__(self, **aliases: str) -> None:
        self.aliases = dict(aliases)

    def get_alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


def test_an_alias_moves_only_from_the_champion_the_decision_read():
    tracker = _Aliases(champion="3")
    assert not compare_and_set_alias(tracker, "m", "champion", "5", "2")  # moved meanwhile: refused
    assert tracker.aliases["champion"] == "3"
    assert compare_and_set_alias(tracker, "m", "champion", "5", "3")
    assert tracker.aliases["champion"] == "5"
    assert not compare_and_set_alias(tracker, "m", "champion", "6", None)  # "only when unset"
