"""The DEFAULT invocation of `grasp bench accuracy` and `grasp bench ablation` (no seed, target, method or
variant flags: selection seeds 0,1,2, confirmation seeds 3,4,5, every domain, every default method) on tiny
params, so a default that crashes or a protocol that selects on the wrong seeds fails here."""

from __future__ import annotations

import csv

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny params (2 domains) and one workdir the two benches share, so sources train once per seed."""
    from tests.conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("bench-defaults")
    raw = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    raw["data"]["domains"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _bench(project, name: str) -> int:
    import torch

    from flows.cli import main

    previous = torch.get_num_threads()
    try:
        return main(["bench", name, "--params", str(project / "params.yaml"), "--workdir", str(project / "work"),
                     "--out", str(project / name), "--quiet",
                     *(["--tracking-uri", f"sqlite:///{project}/mlflow.db"] if name == "accuracy" else [])])
    finally:
        torch.set_num_threads(previous)


def _read(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _best_val(rows: list[dict], candidates: list[str]) -> str:
    def score(method: str) -> float:
        per_seed: dict[str, list[float]] = {}
        for r in (r for r in rows if r["method"] == method):
            per_seed.setdefault(r["seed"], []).append(float(r["val_accuracy"]))
        return sum(sum(v) / len(v) for v in per_seed.values()) / len(per_seed)

    return max(candidates, key=lambda m: (score(m), -candidates.index(m)))


def test_bench_accuracy_default_selects_on_0_1_2_and_reports_3_4_5(project):
    from flows.bench.accuracy import DEFAULT_METHODS

    assert _bench(project, "accuracy") == 0
    out = project / "accuracy"
    selection, confirmation = _read(out / "accuracy-selection.csv"), _read(out / "accuracy.csv")
    cells = {(t, m) for t in ("2020", "2021") for m in DEFAULT_METHODS}
    assert {(r["seed"], r["target"], r["method"]) for r in selection} == {(s, *c) for c in cells for s in "012"}
    assert {(r["seed"], r["target"], r["method"]) for r in confirmation} == {(s, *c) for c in cells for s in "345"}
    chosen = _best_val(selection, list(DEFAULT_METHODS))
    md = (out / "accuracy.md").read_text()
    assert f"Chosen: `{chosen}`" in md and "**Paired on seeds 3, 4, 5** (never used to select)" in md
    assert md.startswith(f"Command: `grasp bench accuracy --params {project / 'params.yaml'} --workdir ")
    assert (out / "accuracy.png").stat().st_size > 0


def test_bench_ablation_default_confirms_the_val_choice_default_and_controls(project):
    from flows.bench.ablation import DEFAULT_CONTROLS, DEFAULT_VARIANTS

    assert _bench(project, "ablation") == 0
    out = project / "ablation"
    selection, confirmation = _read(out / "ablation-selection.csv"), _read(out / "ablation.csv")
    assert {(r["seed"], r["method"]) for r in selection} == {(s, m) for s in "012" for m in DEFAULT_VARIANTS}
    chosen = _best_val(selection, list(DEFAULT_VARIANTS))
    assert {(r["seed"], r["method"]) for r in confirmation} == {
        (s, m) for s in "345" for m in {chosen, "default", *DEFAULT_CONTROLS}}
    assert f"| **{chosen}** (chosen) |" in (out / "ablation.md").read_text()
