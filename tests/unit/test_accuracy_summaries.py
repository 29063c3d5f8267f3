"""Pure summaries of the accuracy bench and the continual-learning matrix, on hand-made numbers."""

from __future__ import annotations

import argparse
import gc
import json
import math
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from flows.bench import accuracy as ba
from flows.bench import summaries as bs
from flows.reports import accuracy_matrix as am
from grasp_core.errors import GraspError
from tests.conftest import tiny_split

# R[k][j]: test accuracy after merge step k on domain j; step k merged MERGED[k]; "t" is the target
MATRIX = [{"a": 0.9, "b": 0.5, "c": 0.3, "t": 0.6, "u": 0.1},
          {"a": 0.8, "b": 0.9, "c": 0.4, "t": 0.7, "u": 0.2},
          {"a": 0.7, "b": 0.8, "c": 0.9, "t": 0.8, "u": 0.4}]
MERGED = ["a", "b", "c"]
DOMAINS = ["a", "b", "c", "t", "u"]  # "u": a domain with data that no step merged
BASE = {"a": 0.5, "b": 0.4, "c": 0.2, "t": 0.3, "u": 0.1}


def _rows(table: dict[tuple[str, str], list[float]]) -> list[dict]:
    """Bench rows from {(method, target): [accuracy per seed 0, 1, ...]}."""
    return [{"method": m, "target": t, "seed": s, "test_accuracy": acc}
            for (m, t), accs in table.items() for s, acc in enumerate(accs)]


BENCH = _rows({("grasp", "x"): [0.80, 0.90], ("grasp", "y"): [0.60, 0.70],
               ("fusion", "x"): [0.70, 0.70], ("fusion", "y"): [0.65, 0.75]})


def test_mean_std_and_its_format():
    assert bs.mean_std([0.6, 0.7]) == pytest.approx((0.65, math.sqrt(0.005)))
    assert bs.mean_std([0.6]) == (0.6, 0.0)
    assert all(math.isnan(v) for v in bs.mean_std([]))
    assert bs.format_mean_std([0.6, 0.7]) == "65.0 ± 7.1"
    assert bs.format_mean_std([0.05, 0.03], signed=True) == "+4.0 ± 1.4"
    assert bs.format_mean_std([-0.05], signed=True) == "-5.0 ± 0.0"
    assert bs.format_mean_std([]) == "-"


def test_paired_differences_per_target_and_over_targets():
    assert bs.paired_differences(BENCH, "grasp", "fusion", "x") == pytest.approx([0.10, 0.20])
    assert bs.paired_differences(BENCH, "grasp", "fusion", "y") == pytest.approx([-0.05, -0.05])
    # over targets: per seed, mean over targets first (seed 0: 0.70 vs 0.675; seed 1: 0.80 vs 0.725)
    assert bs.paired_differences(BENCH, "grasp", "fusion") == pytest.approx([0.025, 0.075])
    assert bs.paired_differences(BENCH, "grasp", "missing", "x") == []


def test_summary_table_and_markdown():
    table = bs.summary_table(BENCH)
    assert table == [{"method": "grasp", "x": "85.0 ± 7.1", "y": "65.0 ± 7.1", "mean": "75.0 ± 7.1"},
                     {"method": "fusion", "x": "70.0 ± 0.0", "y": "70.0 ± 7.1", "mean": "70.0 ± 3.5"}]
    md = bs.markdown_table(table).splitlines()
    assert md[0] == "| method | x | y | mean |" and md[1] == "|---|---:|---:|---:|"
    assert md[2] == "| grasp | 85.0 ± 7.1 | 65.0 ± 7.1 | 75.0 ± 7.1 |"


def test_summary_metrics_keys_and_values():
    metrics = ba.summary_metrics(BENCH)
    assert metrics["accuracy/grasp/mean"] == pytest.approx(0.75)
    assert metrics["accuracy/fusion/y/mean"] == pytest.approx(0.70)
    assert metrics["paired/grasp_minus_fusion/mean"] == pytest.approx(0.05)
    assert "paired/grasp_minus_grasp/mean" not in metrics


def test_list_and_choice_errors_name_the_flag():
    assert ba.parse_list("0, 1,2", "--seeds", int) == [0, 1, 2]
    assert ba.parse_list(None, "--targets") is None
    with pytest.raises(GraspError, match="--seeds '0,x'"):
        ba.parse_list("0,x", "--seeds", int)
    with pytest.raises(GraspError, match="--methods: 'grsp' is unknown; choose from: fusion, grasp"):
        ba.check_choices(["grsp"], ["fusion", "grasp"], "--methods")


def test_parsers_register_with_defaults():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench")
    ba.register(sub)
    am.register(sub)
    args = parser.parse_args(["accuracy"])
    assert (args.select_seeds, args.seeds, args.out, args.workdir) == (
        "0,1,2", "3,4,5", Path("results/accuracy"), Path(".cache/bench-accuracy"))
    assert args.handler is ba.cmd_bench_accuracy and args.targets is None and args.methods is None
    args = parser.parse_args(["matrix", "3", "--model", "grasp-2024"])
    assert (args.ref, args.model, args.handler) == ("3", "grasp-2024", am.cmd_bench_matrix)
    assert parser.parse_args(["matrix"]).ref == "@champion"


def test_backward_and_forward_transfer_on_a_hand_made_matrix():
    # BwT: a (merged at 0): 0.7 - 0.9; b (merged at 1): 0.8 - 0.9; c is merged at the last step: left out
    assert am.backward_transfer(MATRIX, MERGED, DOMAINS) == pytest.approx(-0.15)
    # FwT: b: R[0][b] - base_b = 0.5 - 0.4; c: R[1][c] - base_c = 0.4 - 0.2; a is merged at step 0: left out
    assert am.forward_transfer(MATRIX, MERGED, DOMAINS, BASE) == pytest.approx(0.15)
    assert am.forward_transfer(MATRIX, MERGED, DOMAINS, None) is None
    summaries = am.cl_summaries(MATRIX, MERGED, DOMAINS, "t", BASE)
    assert summaries["average_accuracy"] == pytest.approx((0.7 + 0.8 + 0.9 + 0.8) / 4)  # merged sources + target
    assert summaries["average_accuracy_all"] == pytest.approx((0.7 + 0.8 + 0.9 + 0.8 + 0.4) / 5)
    assert summaries["target_accuracy"] == pytest.approx(0.8)


def test_transfer_edge_cases():
    assert am.backward_transfer(MATRIX[:1], ["a"], DOMAINS) is None  # one step: nothing to look back on
    assert am.forward_transfer(MATRIX[:1], ["a"], DOMAINS, BASE) is None
    # a domain merged twice counts from its latest merge; a merged domain without data is left out
    assert am.merge_steps(["a", "zz", "a"], DOMAINS) == {"a": 2}
    assert am.backward_transfer(MATRIX, ["a", "zz", "b"], DOMAINS) == pytest.approx(0.7 - 0.9)


class Constant(nn.Module):
    """Always predicts `label`: its accuracy is the share of that label."""

    def __init__(self, label: int, num_classes: int = 3) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.logits.expand(len(x), -1)


def test_accuracy_matrix_values_and_one_model_alive():
    splits = {"p": tiny_split(30, seed=1), "q": tiny_split(31, seed=2)}  # labels 0,1,2,0,...: q has 11 zeros
    alive: list[weakref.ref] = []

    def models():
        for label in (0, 1, 2):
            gc.collect()
            assert all(ref() is None for ref in alive), "the previous model is still alive"
            model = Constant(label)
            alive.append(weakref.ref(model))
            yield f"m{label}", model
            del model

    rows = am.accuracy_matrix(models(), splits)
    assert [r["model"] for r in rows] == ["m0", "m1", "m2"] and [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["p"] == pytest.approx(1 / 3) and rows[0]["q"] == pytest.approx(11 / 31)
    assert rows[2]["q"] == pytest.approx(10 / 31)


# A lineage that starts from the mean of a, b, c (`transfer.start: mean`), then merges b and c again on their own
MEAN_START = [["a", "b", "c"], "b", "c"]


def test_a_mean_start_counts_as_every_member_merged_at_its_step():
    assert am.step_domains(MEAN_START) == [["a", "b", "c"], ["b"], ["c"]]
    assert am.merge_steps(MEAN_START, DOMAINS) == {"a": 0, "b": 1, "c": 2}  # latest merge: BwT reads from there
    assert am.first_steps(MEAN_START, DOMAINS) == {"a": 0, "b": 0, "c": 0}  # all seen at step 0: FwT reads before
    # BwT: a (last merged in the mean, step 0): 0.7 - 0.9; b (merged again at 1): 0.8 - 0.9; c at the last step
    assert am.backward_transfer(MATRIX, MEAN_START, DOMAINS) == pytest.approx(-0.15)
    # FwT: no member has a model before the step that first saw it (the mean is step 0)
    assert am.forward_transfer(MATRIX, MEAN_START, DOMAINS, BASE) is None
    summaries = am.cl_summaries(MATRIX, MEAN_START, DOMAINS, "t", BASE)
    assert "mean" not in am.merge_steps(MEAN_START, [*DOMAINS, "mean"])
    assert summaries["average_accuracy"] == pytest.approx((0.7 + 0.8 + 0.9 + 0.8) / 4)  # a counts as seen
    # the same lineage read as if "mean" were a domain would leave a out of the seen average
    assert am.cl_summaries(MATRIX, ["mean", "b", "c"], DOMAINS, "t")["average_accuracy"] == pytest.approx(
        (0.8 + 0.9 + 0.8) / 3)


def test_forward_transfer_reads_the_model_before_a_later_mean_saw_its_members():
    merged = ["a", ["a", "b"], "c"]  # b first seen in a mean at step 1
    assert am.first_steps(merged, DOMAINS) == {"a": 0, "b": 1, "c": 2}
    # FwT: b: R[0][b] - base_b = 0.5 - 0.4; c: R[1][c] - base_c = 0.4 - 0.2
    assert am.forward_transfer(MATRIX, merged, DOMAINS, BASE) == pytest.approx(0.15)
    # BwT: a and b last merged at step 1: (0.7 - 0.8) and (0.8 - 0.9)
    assert am.backward_transfer(MATRIX, merged, DOMAINS) == pytest.approx(-0.1)


def test_matrix_rows_name_a_mean_starts_members(tmp_path):
    from flows.stores.start_sources import START_SOURCES_TAG

    members = [{"domain": d, "sha256": f"sha-{d}", "md5": f"md5-{d}"} for d in ("b", "a")]
    row = {"source_domain": "mean", START_SOURCES_TAG: json.dumps(members)}
    assert am.lineage_step_domains(row) == ["b", "a"]
    assert am.lineage_step_domains({"source_domain": "c"}) == ["c"]
    assert am.step_label({"source_domain": "mean", "merged_domains": "b+a"}) == "mean(b+a)"
    assert am.step_label({"source_domain": "c", "merged_domains": "c"}) == "c"
    rows = [{"step": 0, "model": "v1", "source_domain": "mean", "merged_domains": "b+a", **MATRIX[0]}]
    path = am.write_matrix_csv(rows, DOMAINS, tmp_path / "m.csv", None)
    assert path.read_text().splitlines()[1].startswith("0,v1,mean,b+a,0.9,")


def test_a_runs_mean_start_merges_the_domains_its_checkpoint_header_lists():
    from flows.pipeline.sources import AreaSource
    from flows.pipeline.start import merged_domains
    from flows.stores.start_sources import START_SOURCES_TAG
    from grasp_core.checkpoints import CheckpointHeader, SavedCheckpoint

    members = [{"domain": d, "sha256": f"sha-{d}"} for d in ("b", "a", "c")]
    mean = CheckpointHeader("SmallCNN", 2, ("0", "1"), (1, 8, 8), {START_SOURCES_TAG: json.dumps(members)})
    plain = CheckpointHeader("SmallCNN", 2, ("0", "1"), (1, 8, 8), {START_SOURCES_TAG: json.dumps(members)})
    assert merged_domains(AreaSource("mean", SavedCheckpoint(None, "m", mean))) == ["b", "a", "c"]  # type: ignore[arg-type]
    # a source file whose header claims members is still one source: only the run's own mean start is split
    assert merged_domains(AreaSource("b", SavedCheckpoint(None, "b", plain))) == "b"  # type: ignore[arg-type]
