"""`grasp bench ablation` end to end on a tiny config: selection on validation, confirmation on fresh seeds."""

from __future__ import annotations

import csv
import statistics

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANTS = "default,paper,nearest+rollback,off:nearest"
CONTROLS = "fusion,opcm"


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    import torch

    from flows.cli import main
    from tests.conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("ablation")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    previous = torch.get_num_threads()
    try:
        rc = main(["bench", "ablation", "--params", str(params), "--workdir", str(root / "work"), "--select-seeds",
                   "0,1", "--seeds", "2", "--targets", "2020,2022", "--variants", VARIANTS, "--controls", CONTROLS,
                   "--out", str(root / "out"), "--quiet"])
    finally:
        torch.set_num_threads(previous)
    return rc, root / "out"


def _read(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _chosen_on_val(rows: list[dict], candidates: list[str]) -> str:
    def score(method: str) -> float:
        per_seed: dict[str, list[float]] = {}
        for r in rows:
            if r["method"] == method:
                per_seed.setdefault(r["seed"], []).append(float(r["val_accuracy"]))
        return statistics.fmean(statistics.fmean(v) for v in per_seed.values())

    return max(candidates, key=lambda m: (score(m), -candidates.index(m)))


def test_variants_select_on_their_seeds_and_the_choice_is_confirmed_on_the_others(ablation):
    from flows.bench.accuracy import ROW_KEYS

    rc, out = ablation
    assert rc == 0
    selection, confirmation = _read(out / "ablation-selection.csv"), _read(out / "ablation.csv")
    assert tuple(selection[0]) == ROW_KEYS
    assert {(r["seed"], r["target"], r["method"]) for r in selection} == {
        (s, t, m) for s in ("0", "1") for t in ("2020", "2022") for m in VARIANTS.split(",")}
    chosen = _chosen_on_val(selection, VARIANTS.split(","))
    confirmed = {chosen, "default", *CONTROLS.split(",")}
    assert {(r["seed"], r["target"], r["method"]) for r in confirmation} == {
        ("2", t, m) for t in ("2020", "2022") for m in confirmed}
    assert len({r["target_steps"] for r in selection + confirmation}) == 1  # one target budget for every run
    assert all(int(r["peak_models_alive"]) <= 2 for r in selection + confirmation)
    md = (out / "ablation.md").read_text()
    assert f"Chosen: `{chosen}`, the highest mean." in md and f"| **{chosen}** (chosen) |" in md
    assert f"test accuracy of `{chosen}` minus each control" in md and "| fusion | " in md
    assert (out / "ablation.png").read_bytes().startswith(b"\x89PNG")


def test_markdown_has_the_table_and_the_plain_statement(ablation):
    _, out = ablation
    md = (out / "ablation.md").read_text()
    assert "| method | 2020 | 2022 | mean |" in md
    assert "Where `default` does not win on the confirmation seeds" in md
    assert "`default` = params.yaml: align.batches=" in md and "transfer.order=" in md


def test_unknown_variant_and_overlapping_seeds_are_refused():
    from flows.bench.ablation import variant_overrides
    from flows.cli import main
    from grasp_core.errors import GraspError

    with pytest.raises(GraspError, match=r"--variants \('nearest\+nope'\): 'nope' is unknown; choose from: paper"):
        variant_overrides("nearest+nope")
    assert variant_overrides("off:rollback")[0] == "transfer_off"
    assert variant_overrides("default") == ("grasp", None)
    assert main(["bench", "ablation", "--select-seeds", "0,1", "--seeds", "1,2", "--quiet"]) != 0
