"""The shipped params files differ from params.yaml only where their header says, so results stay regenerable."""

from __future__ import annotations

from pathlib import Path

from flows.bench.ablation import PAPER
from grasp_core.config import flatten, load_config

ROOT = Path(__file__).resolve().parents[2]


def _differences(name: str) -> dict[str, object]:
    base, other = flatten(load_config(ROOT / "params.yaml")), flatten(load_config(ROOT / "params" / name))
    assert set(base) == set(other)
    return {key: other[key] for key in base if other[key] != base[key]}


def test_paper_yaml_is_params_yaml_with_the_official_rule():
    paper = flatten(load_config(ROOT / "params" / "paper.yaml"))
    assert {key: paper[key] for key in PAPER} == PAPER
    assert set(_differences("paper.yaml")) <= set(PAPER)


def test_complementary_yaml_is_params_yaml_on_the_complementary_benchmark():
    assert _differences("complementary.yaml") == {"data.generator": "digits_complementary"}


def test_workload_5min_yaml_is_params_yaml_with_30_times_the_epochs():
    base = flatten(load_config(ROOT / "params.yaml"))
    assert _differences("workload-5min.yaml") == {key: 30 * base[key] for key in (
        "base.epochs", "sources.epochs", "finetune.initial_epochs", "finetune.epochs")}
