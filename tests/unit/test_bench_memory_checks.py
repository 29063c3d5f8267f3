"""`grasp bench memory`'s target checks: what counts against the 4-copy floor and what does not."""

from __future__ import annotations

from flows.bench.memory import check_targets, memory_ratios


def _rows(multiple: float, buffer_frac: float) -> list[dict]:
    return [{"method": "grasp", "k": k, "peak_rss_mb": 1000.0 + k / 8, "peak_model_bytes": 200,
             "param_sized_multiple": multiple, "buffer_frac": buffer_frac} for k in (2, 32)]


def _floor_check(rows: list[dict]) -> dict:
    return next(c for c in check_targets(rows, memory_ratios(rows)) if "param-sized" in c["target"])


def test_bn_statistics_of_the_model_are_not_counted_as_copies():
    assert _floor_check(_rows(4.002, 0.0021))["ok"]  # resnet50: its BN running stats have the BN weights' shape
    assert not _floor_check(_rows(4.002, 0.0))["ok"]  # without buffers, 0.002 more is a stray copy's worth
    assert not _floor_check(_rows(5.0, 0.0021))["ok"]  # a fifth copy (e.g. the best-val weights in memory)
