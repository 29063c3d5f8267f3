"""The selection protocol of the benches on hand-made rows: choose on validation, pair on fresh seeds."""

from __future__ import annotations

import pytest

from flows.bench import accuracy as ba
from flows.bench import protocol as bp
from grasp_core.errors import GraspError


def _rows(table: dict[tuple[str, str], list[tuple[float, float]]], first_seed: int = 0) -> list[dict]:
    """Bench rows from {(method, target): [(val, test) per seed first_seed, first_seed + 1, ...]}."""
    return [{"method": m, "target": t, "seed": first_seed + s, "val_accuracy": val, "test_accuracy": test,
             "target_steps": 6}
            for (m, t), pairs in table.items() for s, (val, test) in enumerate(pairs)]


# "peeky" has the best TEST accuracy but the worse validation accuracy: choosing on val must not pick it
SELECT = _rows({("honest", "x"): [(0.90, 0.70), (0.80, 0.70)], ("honest", "y"): [(0.70, 0.60), (0.70, 0.60)],
                ("peeky", "x"): [(0.70, 0.99), (0.70, 0.99)], ("peeky", "y"): [(0.70, 0.99), (0.70, 0.99)]})
CONFIRM = _rows({("honest", "x"): [(0.0, 0.80), (0.0, 0.70), (0.0, 0.90)],
                 ("ctrl", "x"): [(0.0, 0.70), (0.0, 0.75), (0.0, 0.80)]}, first_seed=3)


def test_confirmation_seeds_never_select():
    bp.check_seed_split([0, 1, 2], [3, 4, 5])
    with pytest.raises(GraspError, match="--select-seeds and --seeds share 2; confirmation seeds must never select"):
        bp.check_seed_split([0, 1, 2], [2, 3])
    with pytest.raises(GraspError, match="--seeds: empty"):
        bp.check_seed_split([0], [])


def test_choice_is_made_on_validation_accuracy_only():
    assert bp.choose_on_val(SELECT, ["peeky", "honest"]) == "honest"  # val 0.775 vs 0.70; test says the opposite
    tie = _rows({("a", "x"): [(0.5, 0.1)], ("b", "x"): [(0.5, 0.9)]})
    assert bp.choose_on_val(tie, ["a", "b"]) == "a" and bp.choose_on_val(tie, ["b", "a"]) == "b"
    with pytest.raises(GraspError, match="no selection rows"):
        bp.choose_on_val(SELECT, ["absent"])


def test_paired_differences_with_spread_and_wins():
    diffs = bp.paired(CONFIRM, "honest", "ctrl", "x")
    assert diffs == pytest.approx([10.0, -5.0, 10.0])
    assert bp.format_paired(diffs) == "+5.0 ± 8.7 [-5.0..+10.0] 2/3"
    assert bp.format_paired([]) == "-"
    table = bp.paired_table(CONFIRM, "honest", ["ctrl", "honest"])
    assert table == ["| honest − | x | mean |", "|---|---:|---:|", "| ctrl | +5.0 ± 8.7 [-5.0..+10.0] 2/3 | "
                     "+5.0 ± 8.7 [-5.0..+10.0] 2/3 |"]


def test_report_names_the_choice_its_validation_and_the_confirmation_seeds():
    md = ba.format_markdown(CONFIRM + _rows({("grasp", "x"): [(0.0, 0.5)] * 3}, first_seed=3), None, SELECT, "honest")
    assert "**Selection** on seeds 0, 1: validation accuracy" in md and "Chosen: `honest`" in md
    assert "| **honest** (chosen) | 85.0 ± 7.1 | 70.0 ± 0.0 | 77.5 ± 3.5 |" in md
    assert "| peeky | 70.0 ± 0.0 | 70.0 ± 0.0 | 70.0 ± 0.0 |" in md
    assert "**Paired on seeds 3, 4, 5** (never used to select): test accuracy of `honest`" in md
    assert "| ctrl | +5.0 ± 8.7 [-5.0..+10.0] 2/3 |" in md
    assert "test accuracy of `grasp` minus each control" in md


def test_command_line_spells_out_every_option_that_shapes_the_table():
    from flows.cli import build_parser

    args = build_parser().parse_args(["bench", "ablation", "--seeds", "7", "--targets", "2024", "--quiet"])
    assert bp.command_line(args) == ("grasp bench ablation --params params.yaml --workdir .cache/bench-ablation "
                                     "--select-seeds 0,1,2 --seeds 7 --targets 2024 --source-order given --out "
                                     "results/ablation")
    args = build_parser().parse_args(["bench", "accuracy", "--out", "my dir", "--tracking-uri", "sqlite:///x.db"])
    assert bp.command_line(args).endswith("--seeds 3,4,5 --source-order given --out 'my dir'")  # no tracking URI
