"""Source order: time from the data's domain list, and the `scored` order that names cannot move."""

from __future__ import annotations

import copy
import dataclasses

import torch

from grasp_core.grasp import merge_source, target_loaders
from grasp_core.memory import MemoryTracker
from grasp_core.methods import run_method
from grasp_core.methods.grasp_method import merge_order
from grasp_core.models import build_model
from grasp_core.order import in_time_order, nearest_first, order_sources, score_sources
from grasp_core.transfer import recalibrate_batchnorm
from tests.conftest import quick_config, tiny_method_context, trained_mlp

CLEAR = ["year_1-2", "year_3-4", "year_10-11", "year_11-12"]


def test_nearest_reads_time_from_the_domain_list_before_the_names():
    seasons = ["spring", "summer", "autumn", "winter"]  # alphabetical order is not time order
    assert nearest_first(["autumn", "spring", "summer"], "winter", seasons) == ["autumn", "summer", "spring"]
    assert order_sources(["spring", "summer", "autumn"], "", "nearest", timeline=seasons) == \
        ["autumn", "summer", "spring"]  # "" = the newest domain
    assert in_time_order(["winter", "added", "spring"], seasons) == ["spring", "winter", "added"]


def test_nearest_without_a_domain_list_sorts_names_naturally():
    # plain sorted() puts year_10-11 before year_3-4 and so starts from year_1-2
    assert nearest_first(CLEAR[:3], "year_11-12") == ["year_10-11", "year_3-4", "year_1-2"]
    assert in_time_order(list(reversed(CLEAR)), []) == CLEAR


def test_scored_order_follows_the_models_not_their_names_or_listing(tiny_domain):
    models = [trained_mlp(tiny_domain, steps, seed) for steps, seed in ((0, 1), (40, 2), (3, 3), (12, 4))]
    scores = [s.val_accuracy for s in score_sources("0123", lambda i: models[int(i)], tiny_domain.val, 3)]
    expected = sorted(range(4), key=lambda i: -scores[i])
    assert len(set(scores)) == 4, scores  # distinct: the order is decided by accuracy alone
    cfg = quick_config(order="scored")
    for names in (["a", "b", "c", "d"], ["2024", "2021", "2023", "2022"]):
        for listing in ([0, 1, 2, 3], [3, 1, 0, 2]):
            named = {names[i]: models[i] for i in listing}
            order = merge_order(tiny_method_context(tiny_domain, named, cfg, domains=(*names, "t")))
            assert [names.index(n) for n in order] == expected


def test_scored_ties_break_on_the_weights_hash_whatever_the_names(tiny_domain):
    good = trained_mlp(tiny_domain, 20, 5)
    twin = copy.deepcopy(good)
    with torch.no_grad():  # a hidden unit fc2 never reads: the same outputs bit for bit, other weights
        good.fc2.weight[:, 0] = 0.0
        twin.fc2.weight[:, 0] = 0.0
        twin.fc1.weight[0] += 1.0
    a, b = score_sources("ab", {"a": good, "b": twin}.__getitem__, tiny_domain.val, 3)
    assert (a.val_accuracy, a.val_loss) == (b.val_accuracy, b.val_loss) and a.weights_sha256 != b.weights_sha256
    first = good if a.weights_sha256 < b.weights_sha256 else twin
    cfg = quick_config(order="scored")
    for named in ({"x": good, "y": twin}, {"y": good, "x": twin}, {"x": twin, "y": good}):
        order = merge_order(tiny_method_context(tiny_domain, named, cfg))
        assert named[order[0]] is first


def test_best_single_fine_tunes_the_source_the_scored_order_starts_from(tiny_domain):
    models = {name: trained_mlp(tiny_domain, steps, seed) for name, steps, seed in
              (("old", 30, 6), ("mid", 2, 7), ("new", 8, 8))}
    ctx = tiny_method_context(tiny_domain, models, quick_config(order="scored"))
    result = run_method("best_single", ctx)
    assert result.detail["chosen_source"] == merge_order(ctx)[0] == "old"


def test_transfer_off_gets_the_same_ingredients_as_grasp(tiny_domain):
    models = {name: trained_mlp(tiny_domain, steps, seed) for name, steps, seed in (("p", 5, 9), ("q", 9, 10))}
    ctx = tiny_method_context(tiny_domain, models, quick_config(order="scored"))
    grasp, off = run_method("grasp", ctx).detail, run_method("transfer_off", ctx).detail
    assert grasp["policy"] != off["policy"] == "none"
    assert {k: v for k, v in grasp.items() if k not in ("policy", "rejected")} == \
        {k: v for k, v in off.items() if k not in ("policy", "rejected")}


def test_bn_recalibration_runs_with_policy_none_as_after_a_transfer(tiny_domain):
    cfg = quick_config(policy="none", bn_recalibrate=True)
    torch.manual_seed(11)
    target = build_model("small_cnn", 3, (1, 4, 4))
    source = build_model("small_cnn", 3, (1, 4, 4))
    merge = merge_source(target, source, target_loaders(tiny_domain, cfg), cfg, MemoryTracker.for_model(target))
    assert merge.transferred == []
    expected = copy.deepcopy(target)
    recalibrate_batchnorm(expected, tiny_domain.train.x)  # recalibration is idempotent: equal iff it ran
    bn = target.features[0][1]
    assert torch.allclose(bn.running_mean, expected.features[0][1].running_mean, atol=1e-6)
    off = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, bn_recalibrate=False))
    untouched = copy.deepcopy(expected)
    untouched.features[0][1].running_mean.fill_(7.0)
    merge_source(untouched, source, target_loaders(tiny_domain, off), off, MemoryTracker.for_model(target))
    assert not torch.allclose(untouched.features[0][1].running_mean, bn.running_mean)


def test_bench_source_orders_reorder_the_domain_list_only():
    from flows.bench.accuracy import permuted_domains

    years = ["2020", "2021", "2022", "2023", "2024"]
    assert permuted_domains(years, "given", 0) == years
    assert permuted_domains(years, "reversed", 0) == years[::-1]
    shuffled = permuted_domains(years, "permuted", 1)
    assert sorted(shuffled) == years and shuffled != years and shuffled == permuted_domains(years, "permuted", 1)
