"""`grasp bench ablation` end to end on a tiny config: rows, the markdown table and the CSV."""

from __future__ import annotations

import csv

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANTS = "default,paper,nearest+rollback,off:nearest"
CONTROLS = "fusion,ties"


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
        rc = main(["bench", "ablation", "--params", str(params), "--workdir", str(root / "work"), "--seeds", "0,1",
                   "--targets", "2020,2022", "--variants", VARIANTS, "--controls", CONTROLS, "--out",
                   str(root / "out"), "--quiet"])
    finally:
        torch.set_num_threads(previous)
    return rc, root / "out"


def test_csv_has_every_seed_target_variant_and_control(ablation):
    from flows.bench_accuracy import ROW_KEYS

    rc, out = ablation
    assert rc == 0
    with open(out / "ablation.csv") as fh:
        rows = list(csv.DictReader(fh))
    methods = [*VARIANTS.split(","), *CONTROLS.split(",")]
    assert tuple(rows[0]) == ROW_KEYS
    assert {(r["seed"], r["target"], r["method"]) for r in rows} == {
        (s, t, m) for s in ("0", "1") for t in ("2020", "2022") for m in methods}
    assert len(rows) == 2 * 2 * len(methods)
    assert len({r["target_steps"] for r in rows}) == 1  # one target budget for every variant and control
    assert all(int(r["peak_models_alive"]) <= 2 for r in rows)


def test_markdown_has_the_table_the_paired_lines_and_the_plain_statement(ablation):
    _, out = ablation
    md = (out / "ablation.md").read_text()
    assert "| method | 2020 | 2022 | mean |" in md
    for method in [*VARIANTS.split(","), *CONTROLS.split(",")]:
        assert f"| {method} |" in md
    assert "- **nearest+rollback** − paper: 2020 " in md and "(seeds better)" in md
    assert "Where `default` does not win" in md
    assert "`default` = params.yaml: align.batches=" in md and "transfer.order=" in md


def test_unknown_variant_is_refused():
    from flows.bench_ablation import variant_overrides
    from grasp_core.errors import GraspError

    with pytest.raises(GraspError, match=r"--variants \('nearest\+nope'\): 'nope' is unknown; choose from: paper"):
        variant_overrides("nearest+nope")
    assert variant_overrides("off:rollback")[0] == "transfer_off"
    assert variant_overrides("default") == ("grasp", None)
