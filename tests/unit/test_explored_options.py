"""The options the issue-17 exploration added: `transfer.check`, `transfer.after_mean`, `finetune.schedule`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from grasp_core.config import Config
from grasp_core.finetune import evaluate
from grasp_core.grasp import StepResult, run_grasp, target_loaders
from grasp_core.memory import model_param_bytes, param_shapes_of
from grasp_core.methods import MethodContext, run_method
from grasp_core.models import build_model

SHAPE = (1, 4, 4)


def _cfg(**transfer: Any) -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=1, epochs=1),
                               data=dataclasses.replace(cfg.data, augment=False),
                               transfer=dataclasses.replace(cfg.transfer, **transfer))


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", 3, SHAPE)


def _zeroed() -> torch.nn.Module:
    """A source whose every parameter is 0: it predicts one class for every image."""
    model = _model(5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def _weights(result: StepResult) -> dict[str, torch.Tensor]:
    assert result.target is not None
    return {k: v.clone() for k, v in result.target.state_dict().items()}


def _two_stages(domain, cfg: Config) -> list[StepResult]:
    torch.manual_seed(0)
    stream = iter([("s0", _model(1)), ("zero", _zeroed())])
    return list(run_grasp(stream, target_loaders(domain, cfg), cfg))


def test_check_refuses_a_transfer_that_lowers_val_and_the_stage_fine_tunes_as_transfer_off(tiny_domain):
    # threshold -1 with the hard copy: every tensor of the all-zero source lands in the target
    cfg = _cfg(policy="paper", threshold=-1.0, rollback=False, check=True, start="first")
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, initial_epochs=8))  # above chance
    loaders = target_loaders(tiny_domain, cfg)
    stage0 = next(run_grasp(iter([("s0", _model(1))]), loaders, cfg))
    assert stage0.target is not None
    assert evaluate(_zeroed(), loaders.val, 3).accuracy < stage0.val_accuracy  # the copy does lower val
    checked = _two_stages(tiny_domain, cfg)
    off = _two_stages(tiny_domain, dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, policy="none")))
    assert checked[1].transfer_refused and checked[1].transferred == () and checked[1].params_transferred == 0
    assert not off[1].transfer_refused
    refused, plain = _weights(checked[1]), _weights(off[1])
    assert all(torch.equal(refused[k], plain[k]) for k in plain)  # the refused stage is a transfer_off stage
    unchecked = _two_stages(tiny_domain, dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer,
                                                                                               check=False)))
    assert len(unchecked[1].transferred) == len(unchecked[1].param_numels)  # without the check it is kept


def test_check_keeps_a_transfer_that_does_not_lower_val(tiny_domain):
    cfg = _cfg(policy="paper", threshold=-1.0, rollback=False, check=True)
    target, twin = _model(1), _model(1)  # the same weights: the copy changes nothing, val stays
    result = next(run_grasp(iter([("twin", twin)]), target_loaders(tiny_domain, cfg), cfg, target=target,
                            start_stage=1))
    assert not result.transfer_refused and len(result.transferred) == len(result.param_numels)


def _context(domain, cfg: Config, k: int, steps: list[StepResult] | None = None) -> MethodContext:
    unit = _model(0)
    unit_bytes, shapes = model_param_bytes(unit), param_shapes_of(unit)
    del unit  # the test keeps no model of its own alive
    names = [str(2000 + i) for i in range(k)]
    return MethodContext(cfg=cfg, loaders=target_loaders(domain, cfg), source_names=tuple(names),
                         open_source=lambda name: _model(100 + int(name) - 2000), open_base=lambda: _model(99),
                         model_param_bytes=unit_bytes, param_shapes=shapes, target_name="2100",
                         domains=(*names, "2100"), on_step=None if steps is None else steps.append)


def test_final_schedule_spends_the_same_budget_once_after_every_merge(tiny_domain):
    staged, final = _cfg(), _cfg()
    final = dataclasses.replace(final, finetune=dataclasses.replace(final.finetune, schedule="final"))
    steps: list[StepResult] = []
    budget = run_method("grasp", _context(tiny_domain, staged, 3)).target_steps
    assert budget == 3 * len(target_loaders(tiny_domain, staged).train) > 0
    assert run_method("grasp", _context(tiny_domain, final, 3, steps)).target_steps == budget
    assert [s.steps for s in steps] == [0, 0, 0]  # every merge untrained: the whole budget comes after them
    for method in ("transfer_off", "best_single", "fusion"):  # every training method alike
        assert run_method(method, _context(tiny_domain, final, 3)).target_steps == budget, method


@pytest.mark.parametrize("after_mean, moved", [("none", False), ("policy", True)])
def test_after_mean_none_only_fine_tunes_after_a_mean_start(tiny_domain, after_mean, moved):
    cfg = _cfg(start="mean", after_mean=after_mean, policy="paper", threshold=-1.0, rollback=False)
    steps: list[StepResult] = []
    result = run_method("grasp", _context(tiny_domain, cfg, 3, steps))
    assert result.detail["start_chosen"] == "mean" and steps[0].source_name == "mean"
    assert any(s.transferred for s in steps[1:]) is moved
    first = _cfg(start="first", after_mean=after_mean, policy="paper", threshold=-1.0, rollback=False)
    steps.clear()
    run_method("grasp", _context(tiny_domain, first, 3, steps))
    assert all(s.transferred for s in steps[1:])  # a source start keeps the policy either way


@pytest.mark.parametrize("option", [{"check": True}, {"schedule": "final"}, {"after_mean": "none", "start": "mean"}])
def test_explored_options_keep_four_copies_and_do_not_grow_with_k(tiny_domain, option):
    schedule = option.get("schedule", "staged")
    cfg = _cfg(**{k: v for k, v in option.items() if k != "schedule"})
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, schedule=schedule))
    peaks = [run_method("grasp", _context(tiny_domain, cfg, k)).memory for k in (2, 6)]
    assert peaks[0].param_bytes_alive == peaks[1].param_bytes_alive > 0
    assert max(p.param_sized_multiple for p in peaks) <= 4.0 + 0.1  # + small_cnn's BN buffers


@pytest.mark.parametrize("after_mean", ["none", "policy"])
@pytest.mark.parametrize("held", [True, False])
def test_a_source_the_mean_start_holds_is_transferred_only_with_after_mean_policy(after_mean, held):
    from grasp_core.start import is_transfer_skipped, merge_config, transfer_applied

    cfg = _cfg(policy="soft", after_mean=after_mean)
    skipped = held and after_mean == "none"
    assert is_transfer_skipped(cfg, held) is skipped
    assert merge_config(cfg, held).transfer.policy == ("none" if skipped else "soft")
    assert merge_config(cfg, held).transfer.after_mean == after_mean  # only the policy of the stage changes
    assert transfer_applied(cfg, held) == ("none (held by the mean start)" if skipped else "soft")


def test_the_default_skips_the_transfer_of_held_sources_and_paper_yaml_never_does():
    from pathlib import Path

    from grasp_core.config import load_config
    from grasp_core.start import is_transfer_skipped

    root = Path(__file__).resolve().parents[2]
    assert Config().transfer.after_mean == load_config(root / "params.yaml").transfer.after_mean == "none"
    assert is_transfer_skipped(load_config(root / "params.yaml"), held_by_start=True)
    paper = load_config(root / "params" / "paper.yaml")
    assert paper.transfer.start == "first" and not is_transfer_skipped(paper, held_by_start=True)


def test_the_prefect_flow_refuses_the_options_only_the_core_engine_applies():
    from flows.pipeline.run import check_flow_options
    from grasp_core.errors import ConfigError

    check_flow_options(Config(), "params.yaml")  # the defaults run in the flow
    check_flow_options(_cfg(check=True), "params.yaml")  # the check lives in the stage itself: the flow has it
    final = dataclasses.replace(Config(), finetune=dataclasses.replace(Config().finetune, schedule="final"))
    with pytest.raises(ConfigError, match=r"params.yaml: 'finetune.schedule' = 'final' runs with `grasp run "
                                          r"--engine core` and the benches only"):
        check_flow_options(final, "params.yaml")
    check_flow_options(_cfg(after_mean="none"), "params.yaml")  # the flow applies it per stage (issue 17 point 9)
    check_flow_options(_cfg(after_mean="policy"), "params.yaml")


def test_bench_ablation_seeds_none_reports_validation_only(tmp_path, monkeypatch, capsys):
    from flows.bench import ablation
    from flows.cli import build_parser

    val = {"default": [0.6, 0.7, 0.8], "default+x": [0.7, 0.7, 0.9], "best_single": [0.5, 0.9, 0.6]}
    rows = [{"method": m, "target": "2024", "seed": s, "val_accuracy": v, "test_accuracy": 0.123, "target_steps": 6}
            for m, vs in val.items() for s, v in enumerate(vs)]
    seen = []

    def fake_run(params, workdir, seeds, targets, variants, controls, progress, **kw):  # the models' part
        seen.append((seeds, list(variants), list(controls)))
        return rows

    monkeypatch.setattr(ablation, "run_ablation", fake_run)
    args = build_parser().parse_args(["bench", "ablation", "--seeds", "none", "--variants", "default,default+x",
                                      "--controls", "best_single", "--out", str(tmp_path), "--quiet"])
    assert args.handler(args) == 0
    assert seen == [([0, 1, 2], ["default", "default+x"], ["best_single"])]  # one phase: selection seeds only
    md = (tmp_path / "ablation.md").read_text()
    assert "Chosen: `default+x`" in md  # 76.7 against 70.0; best_single is a control, never chosen
    assert "| best_single | 66.7 ± 20.8 | 66.7 ± 20.8 |" in md and "12.3" not in md  # no test figure
    assert "validation accuracy of `default+x` minus each other" in md
    assert "| default | +6.7 ± 5.8 [+0.0..+10.0] 2/3 | +6.7 ± 5.8 [+0.0..+10.0] 2/3 |" in md
    assert (tmp_path / "ablation-selection.csv").is_file() and not (tmp_path / "ablation.csv").exists()
    capsys.readouterr()
