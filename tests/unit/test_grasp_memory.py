"""The driver's memory bound, measured by counting live parameters, and the shared target budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grasp_core.config import Config
from grasp_core.grasp import run_grasp, target_loaders
from grasp_core.memory import MemoryTracker, measure, model_param_bytes, param_shapes_of
from grasp_core.methods import METHODS, MethodContext, run_method
from grasp_core.models import build_model

SHAPE = (1, 4, 4)


def _cfg() -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=1, epochs=1),
                               data=dataclasses.replace(cfg.data, augment=False))


def _make_source(i: int):
    torch.manual_seed(100 + i)
    return build_model("small_cnn", 3, SHAPE)


def test_measure_counts_parameter_bytes():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, SHAPE)
    expected = sum(p.numel() * p.element_size() for p in model.parameters())
    assert model_param_bytes(model) == expected
    sample = measure(expected, param_shapes_of(model))
    assert sample.param_bytes_alive >= expected and sample.models_alive >= 1
    twin = build_model("small_cnn", 3, SHAPE)
    assert measure(expected, param_shapes_of(model)).param_bytes_alive - sample.param_bytes_alive == expected
    del twin


PAPER = {"policy": "paper", "threshold": 0.3, "order": "given", "bn_recalibrate": False, "rollback": False,
         "keep_global_best": False}
GRADIENT = {"criterion": "gradient"}  # the paper's alignment
OPTIONS = [  # (align options, transfer options); rollback and global-best copies are parked on disk
    (GRADIENT, PAPER),
    ({**GRADIENT, "batches": 2, "eval_mode": True},
     {**PAPER, "granularity": "channel", "policy": "soft", "bn_recalibrate": True}),
    ({}, {"threshold": -1.0}),  # the defaults (direction alignment): rollback and BN recalibration
    ({}, {}),  # the defaults as they are
    (GRADIENT, {**PAPER, "keep_global_best": True, "threshold": -1.0}),
]
BN_BUFFERS = 0.1  # small_cnn's BatchNorm running statistics have the shape of its BN weights: counted too


@pytest.mark.parametrize("align, transfer", OPTIONS)
def test_grasp_keeps_two_models_and_four_copies_alive_for_eight_sources(tiny_domain, align, transfer):
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, **align),
                              transfer=dataclasses.replace(cfg.transfer, **transfer))
    loaders = target_loaders(tiny_domain, cfg)
    opened = []

    def stream():
        for i in range(8):
            opened.append(i)
            yield f"s{i}", _make_source(i)

    tracker = MemoryTracker.for_model(_make_source(0))
    before = measure(tracker.model_param_bytes, tracker.param_shapes).models_alive
    stages = list(run_grasp(stream(), loaders, cfg, tracker))
    assert [s.stage for s in stages] == list(range(8)) and opened == list(range(8))
    peak_models = max(s.memory.models_alive for s in stages) - before
    peak_multiple = max(s.memory.param_sized_multiple for s in stages)
    assert peak_models <= 2, f"{peak_models} models alive at peak"
    # weights, grads and two AdamW moments: the physical floor of AdamW fine-tuning
    assert peak_multiple <= 4.0 + before + BN_BUFFERS, f"{peak_multiple} parameter-sized tensors alive"
    assert all(s.steps == len(loaders.train) for s in stages)


@pytest.mark.parametrize("order", ["nearest", "aligned"])
def test_ordered_grasp_keeps_two_models_alive_for_eight_sources(tiny_domain, order):
    cfg = _cfg()
    # start "first": this test counts the opens of the order alone (the start rule has its own test below)
    cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, order=order, rollback=True,
                                                                start="first"))
    states = {str(2020 + i): _make_source(i).state_dict() for i in range(8)}
    opened = []

    def open_model(name=None):
        opened.append(name)
        model = build_model("small_cnn", 3, SHAPE)
        if name is not None:
            model.load_state_dict(states[name])
        return model

    unit = _make_source(0)
    ctx = MethodContext(cfg=cfg, loaders=target_loaders(tiny_domain, cfg), source_names=tuple(states),
                        open_source=open_model, open_base=open_model, model_param_bytes=model_param_bytes(unit),
                        param_shapes=param_shapes_of(unit), target_name="2031")
    result = run_method("grasp", ctx)
    assert result.memory.models_alive <= 2 + 1  # +1: the test's own `unit`
    merged = [n for n in opened if n is not None][-8:]
    assert merged == (sorted(states, reverse=True) if order == "nearest" else merged)
    assert len(opened) == (8 if order == "nearest" else 8 + 1 + 8)  # aligned: base + one pre-pass over sources


def _peak_for(k: int, domain, start: str = "auto") -> tuple[int, float]:
    """(peak parameter bytes alive, peak parameter-sized multiple) of the default GRASP over `k` streamed sources."""
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, start=start))
    unit = _make_source(0)
    unit_bytes, shapes = model_param_bytes(unit), param_shapes_of(unit)
    del unit  # the test keeps no model of its own alive
    names = [str(2000 + i) for i in range(k)]
    ctx = MethodContext(cfg=cfg, loaders=target_loaders(domain, cfg), source_names=tuple(names),
                        open_source=lambda name: _make_source(int(name) - 2000),
                        open_base=lambda: _make_source(99), model_param_bytes=unit_bytes, param_shapes=shapes,
                        target_name="2100", domains=(*names, "2100"))
    memory = run_method("grasp", ctx).memory
    return memory.param_bytes_alive, memory.param_sized_multiple


@pytest.mark.parametrize("start", ["auto", "mean"])  # "mean": the streamed mean start is the one GRASP adopts
def test_default_peak_parameter_bytes_do_not_grow_with_k(tiny_domain, start):
    bytes_2, multiple_2 = _peak_for(2, tiny_domain, start)
    bytes_6, multiple_6 = _peak_for(6, tiny_domain, start)
    assert bytes_2 == bytes_6 > 0
    assert max(multiple_2, multiple_6) <= 4.0 + BN_BUFFERS


def test_every_training_method_gets_the_same_target_budget(tiny_domain):
    cfg = _cfg()
    torch.manual_seed(9)
    base = build_model("small_cnn", 3, SHAPE)
    sources = {f"s{i}": _make_source(i).state_dict() for i in range(3)}

    def open_source(name):
        model = build_model("small_cnn", 3, SHAPE)
        model.load_state_dict(sources[name])
        return model

    def open_base():
        model = build_model("small_cnn", 3, SHAPE)
        model.load_state_dict(base.state_dict())
        return model

    ctx = MethodContext(cfg=cfg, loaders=target_loaders(tiny_domain, cfg), source_names=tuple(sources),
                        open_source=open_source, open_base=open_base, model_param_bytes=model_param_bytes(base),
                        param_shapes=param_shapes_of(base))
    results = {name: run_method(name, ctx) for name in sorted(METHODS)}
    assert set(results) == {"grasp", "transfer_off", "target_only", "best_single", "fusion", "ensemble",
                            "weight_averaging", "task_arithmetic", "ties", "opcm"}
    budget = (cfg.finetune.initial_epochs + 2 * cfg.finetune.epochs) * len(ctx.loaders.train)
    for name, result in results.items():
        assert result.target_steps == (0 if name == "ensemble" else budget), name
        assert 0.0 <= result.test_accuracy <= 1.0
    assert results["ensemble"].memory.models_alive >= 3
    assert results["grasp"].memory.models_alive <= 2 + 1  # +1: the test's own `base`


def test_transfer_off_and_grasp_see_identical_batches(tiny_domain):
    """With threshold 1.0 nothing is copied, so GRASP must equal its transfer-off control exactly."""
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, threshold=1.0))
    results = []
    for policy in ("paper", "none"):
        run_cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, policy=policy))
        torch.manual_seed(0)
        stream = ((f"s{i}", _make_source(i)) for i in range(3))
        results.append([s.test_accuracy for s in run_grasp(stream, target_loaders(tiny_domain, run_cfg), run_cfg)])
    assert results[0] == pytest.approx(results[1])


def test_stages_run_one_at_a_time_equal_one_uninterrupted_run(tiny_domain):
    """What pipeline tasks and resumed runs rely on: a stage depends only on its inputs and (seed, stage)."""
    cfg = dataclasses.replace(_cfg(), data=dataclasses.replace(_cfg().data, augment=True))
    whole = list(run_grasp(((f"s{i}", _make_source(i)) for i in range(3)), target_loaders(tiny_domain, cfg), cfg))
    final = {k: v.clone() for k, v in whole[-1].target.state_dict().items()}
    first = next(run_grasp(iter([("s0", _make_source(0))]), target_loaders(tiny_domain, cfg), cfg))
    state = {k: v.clone() for k, v in first.target.state_dict().items()}
    pieces = [first]
    for i in (1, 2):
        target = build_model("small_cnn", 3, SHAPE)
        target.load_state_dict(state)
        step = next(run_grasp(((f"s{i}", _make_source(i)) for _ in [0]), target_loaders(tiny_domain, cfg), cfg,
                              target=target, start_stage=i))
        pieces.append(step)
        state = {k: v.clone() for k, v in step.target.state_dict().items()}
    assert [p.stage for p in pieces] == [0, 1, 2]
    assert [p.test_accuracy for p in pieces] == [w.test_accuracy for w in whole]
    assert [p.transferred for p in pieces] == [w.transferred for w in whole]
    assert all(torch.equal(final[k], state[k]) for k in final)
