"""`grasp bench ablation`: transfer-policy variants chosen on validation, confirmed on fresh seeds against controls.

Each domain is the target in turn, on one target budget. A *variant* is GRASP with the paper's exact settings
plus the options its name lists, joined by `+` (`nearest+rollback`); `off:<variant>` runs the transfer-off
control with those options; `default` is params.yaml as it stands. The protocol (flows/bench/protocol.py):
every variant runs on the selection seeds and the one with the best mean VALIDATION accuracy is chosen; on
the confirmation seeds (disjoint) the chosen variant, `default` and the controls (methods of `grasp bench
accuracy`, run with params.yaml) run again, and their test accuracy is reported with paired differences.
Sources, base and data are built once per seed in `<workdir>/seed-<s>/` and re-used by every variant and
target. Outputs under --out: ablation.csv (confirmation rows), ablation-selection.csv and ablation.md.

Imports here are stdlib only, like flows/bench/accuracy.py.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.bench.accuracy import (
    accuracy_plot,
    add_source_order,
    bench_cases,
    bench_target,
    check_choices,
    parse_list,
    write_csv,
)
from flows.bench.protocol import (
    check_seed_split,
    choose_on_val,
    command_line,
    confirmation_section,
    paired_table,
    selection_section,
)
from flows.bench.summaries import Row, accuracies, markdown_table, ordered, summary_table
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from flows.reports.progress import Progress
    from flows.runtime.options import Subcommands

PAPER: dict[str, Any] = {"align.batches": 1, "align.eval_mode": False, "align.criterion": "gradient",
                         "transfer.policy": "paper", "transfer.threshold": 0.3, "transfer.granularity": "tensor",
                         "transfer.order": "given", "transfer.bn_recalibrate": False, "transfer.rollback": False,
                         "transfer.keep_global_best": False, "transfer.start": "first", "transfer.check": False,
                         "transfer.after_mean": "policy", "finetune.schedule": "staged"}
OPTIONS: dict[str, dict[str, Any]] = {  # one atom per option of issue 8; variants combine them with "+"
    "paper": {},
    "batches4": {"align.batches": 4},
    "eval": {"align.eval_mode": True},
    "channel": {"transfer.granularity": "channel"},
    "soft": {"transfer.policy": "soft"},
    "bn": {"transfer.bn_recalibrate": True},
    "nearest": {"transfer.order": "nearest"},
    "aligned": {"transfer.order": "aligned"},
    "scored": {"transfer.order": "scored"},  # best zero-shot target-val source first, then descending
    "rollback": {"transfer.rollback": True},
    "auto": {"transfer.start": "auto"},  # start from the first source or the sources' mean, the better on val
    "mean": {"transfer.start": "mean"},
    "best": {"transfer.keep_global_best": True},
    "thr0": {"transfer.threshold": 0.0},  # transfer whatever is positively aligned (soft: weight = cos)
    "thr6": {"transfer.threshold": 0.6},
    "direction": {"align.criterion": "direction"},  # score = cos(theta_src - theta_tgt, -target gradient)
    "check": {"transfer.check": True},  # undo a transfer that lowers val before fine-tuning; fine-tune untransferred
    "meanoff": {"transfer.after_mean": "none"},  # after a mean start, later stages only fine-tune
    "final": {"finetune.schedule": "final"},  # merges untrained (guarded zero-shot), then the whole budget at once
}
DEFAULT_VARIANTS = ("default", "paper", "batches4+eval", "channel", "soft", "bn", "nearest", "aligned", "rollback",
                    "best")
DEFAULT_CONTROLS = ("transfer_off", "fusion", "weight_averaging", "task_arithmetic", "ties", "opcm", "best_single",
                    "target_only", "ensemble")
CONTROL_NAMES = frozenset((*DEFAULT_CONTROLS, "grasp"))


def variant_overrides(spec: str) -> tuple[str, dict[str, Any] | None]:
    """`"off:nearest+rollback"` -> ("transfer_off", PAPER + both options); `"default"` -> ("grasp", None)."""
    method, _, atoms = spec.rpartition(":")
    if method not in ("", "off"):
        raise GraspError(f"--variants: '{spec}' has an unknown prefix '{method}:'; only 'off:' is allowed")
    if atoms == "default":
        return ("transfer_off" if method else "grasp"), None
    overrides = dict(PAPER)
    for atom in atoms.split("+"):
        check_choices([atom], [*OPTIONS], f"--variants ('{spec}')")
        overrides.update(OPTIONS[atom])
    return ("transfer_off" if method else "grasp"), overrides


def run_ablation(params: Path, workdir: Path, seeds: list[int], targets: list[str] | None, variants: Sequence[str],
                 controls: Sequence[str], progress: Progress, *, threads: int = 1,
                 source_order: str = "given") -> list[Row]:
    """Every seed x target x (variant | control); one row each, `method` = the variant spec or control name.

    `source_order`: "given", "reversed" or "permuted" (see `flows.bench.accuracy.bench_target`)."""
    from grasp_core.config import replace
    from grasp_core.methods import METHODS
    from grasp_core.threads import pinned_threads

    check_choices(controls, sorted(METHODS), "--controls")
    plans = {spec: variant_overrides(spec) for spec in variants}
    rows: list[Row] = []
    with pinned_threads(threads):
        for c in bench_cases(params, workdir, seeds, targets, progress):
            for spec, (method, overrides) in plans.items():
                cfg_v = c.cfg if overrides is None else replace(c.cfg, **{k.replace(".", "__"): v
                                                                         for k, v in overrides.items()})
                rows += [{**row, "method": spec} for row in
                         bench_target(cfg_v, c.ws, c.target, c.domains, c.classes, [method], progress, source_order)]
            rows += bench_target(c.cfg, c.ws, c.target, c.domains, c.classes, list(controls), progress, source_order)
    return rows


def losses_of(rows: list[Row], method: str = "default") -> list[str]:
    """Plain statements of every (target, competitor) where `method`'s mean accuracy is not the higher."""
    if method not in ordered(rows, "method"):
        return []
    lines = []
    for target in [*ordered(rows, "target"), None]:
        ours = statistics.fmean(accuracies(rows, method, target).values())
        for other in ordered(rows, "method"):
            if other == method or not (other == "paper" or other.startswith("off:") or other in CONTROL_NAMES):
                continue  # other GRASP variants are the ablation, not competitors
            theirs = statistics.fmean(accuracies(rows, other, target).values())
            if ours <= theirs:
                lines.append(f"- {target or 'mean over targets'}: `{method}` {100 * ours:.1f} ≤ `{other}` "
                             f"{100 * theirs:.1f}")
    return lines


@dataclass(frozen=True)
class Protocol:
    """What the selection phase ran and chose (see flows/bench/protocol.py)."""

    select_rows: list[Row]
    candidates: list[str]
    chosen: str
    controls: list[str]
    command: str = ""  # the command line that ran it (flows.bench.protocol.command_line)


def format_markdown(rows: list[Row], overrides: dict[str, str], protocol: Protocol,
                    wall_s: float | None = None) -> str:
    """The command, the confirmation table (test), the selection table (val), paired differences and where the
    choice loses."""
    seeds = ordered(rows, "seed")
    steps = sorted({r["target_steps"] for r in rows if r["target_steps"]})
    compared = [m for m in dict.fromkeys([protocol.chosen, "default"]) if m in ordered(rows, "method")]
    out = [*([f"Command: `{protocol.command}`", ""] if protocol.command else []),
           f"Test accuracy (%) on the confirmation seeds ({', '.join(map(str, seeds))}), mean ± std, target(s) "
           f"{', '.join(map(str, ordered(rows, 'target')))}; every training run spends the same target budget "
           f"({'/'.join(map(str, steps))} optimizer "
           f"steps). `mean`: per seed over targets, then mean ± std over seeds. `{protocol.chosen}` was chosen on "
           "validation accuracy over the selection seeds below.", "",
           markdown_table(summary_table(rows)), "",
           "Variants: GRASP with the paper's settings plus the listed options (`off:` = transfer switched off); "
           "`default` = params.yaml: " + ", ".join(f"{k}={v}" for k, v in overrides.items()), "",
           *selection_section(protocol.select_rows, protocol.candidates, protocol.chosen), "",
           *confirmation_section(rows, compared, ordered(rows, "method"))]
    for method in compared:
        losses = losses_of(rows, method)
        out += ["", f"Where `{method}` does not win on the confirmation seeds (its mean test ≤ the other's):", "",
                *(losses or [f"- nowhere: `{method}` has the highest mean on every target"])]
    if wall_s is not None:
        out += ["", f"Wall time: {wall_s:.0f} s for {len(rows) + len(protocol.select_rows)} runs."]
    return "\n".join(out) + "\n"


def write_outputs(rows: list[Row], out: Path, params: Path, protocol: Protocol,
                  wall_s: float | None = None) -> dict[str, Path]:
    """`ablation.csv` (confirmation rows), `ablation-selection.csv`, `ablation.md` and `ablation.png` (the
    confirmation rows' test accuracy per target) under `out`."""
    from grasp_core.config import flatten, load_config

    flat = flatten(load_config(params))
    overrides = {k: str(flat[k]) for k in PAPER}
    md = out / "ablation.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(format_markdown(rows, overrides, protocol, wall_s))
    return {"csv": write_csv(rows, out / "ablation.csv"),
            "selection_csv": write_csv(protocol.select_rows, out / "ablation-selection.csv"), "md": md,
            "png": accuracy_plot(rows, out / "ablation.png")}


def register(bench_sub: Subcommands) -> None:
    """Add `grasp bench ablation` to the `grasp bench` subparsers."""
    p = bench_sub.add_parser("ablation", help="transfer-policy variants chosen on validation, confirmed on fresh seeds",
                             description="Every domain as target: GRASP variants (paper settings plus options: "
                             f"{', '.join(OPTIONS)}; join with +; prefix off: for transfer off; 'default' = "
                             "params.yaml) run on the selection seeds; the best on validation accuracy, 'default' "
                             "and the controls run on the confirmation seeds. Writes ablation.csv/.md.")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to copy per seed")
    p.add_argument("--workdir", type=Path, default=Path(".cache/bench-ablation"),
                   help="where seed-<s>/ workspaces keep data and checkpoints (re-used across runs)")
    p.add_argument("--select-seeds", default="0,1,2",
                   help="seeds every variant runs on, to choose on validation (default: 0,1,2)")
    p.add_argument("--seeds", default="3,4,5",
                   help="confirmation seeds, disjoint from --select-seeds (default: 3,4,5); 'none': selection "
                   "only (an exploration: variants and controls on validation, no test figure)")
    p.add_argument("--targets", help="comma-separated target domains (default: every domain)")
    p.add_argument("--variants", help=f"comma-separated variants (default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--controls", help=f"comma-separated control methods (default: {','.join(DEFAULT_CONTROLS)}; "
                   "'none' for no control)")
    add_source_order(p)
    p.add_argument("--out", type=Path, default=Path("results/ablation"), help="folder for ablation.csv and .md")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_bench_ablation)


def cmd_bench_ablation(args: argparse.Namespace) -> int:
    from flows.reports.progress import Progress

    controls = parse_list(args.controls, "--controls") or list(DEFAULT_CONTROLS)
    controls = [] if controls == ["none"] else controls
    variants = parse_list(args.variants, "--variants") or list(DEFAULT_VARIANTS)
    targets, progress = parse_list(args.targets, "--targets"), Progress(args.quiet)
    select = parse_list(args.select_seeds, "--select-seeds", int) or []
    if args.seeds == "none":
        return select_only(args, select, targets, variants, controls, progress)
    confirm = parse_list(args.seeds, "--seeds", int)
    check_seed_split(select, confirm or [])
    t0 = time.perf_counter()
    select_rows = run_ablation(args.params, args.workdir, select, targets, variants, [], progress,
                               source_order=args.source_order)
    chosen = choose_on_val(select_rows, variants)
    progress.say(f"chosen on validation: {chosen}")
    rows = run_ablation(args.params, args.workdir, confirm or [], targets, list(dict.fromkeys([chosen, "default"])),
                        controls, progress, source_order=args.source_order)
    files = write_outputs(rows, args.out, args.params,
                          Protocol(select_rows, variants, chosen, controls, command_line(args)),
                          time.perf_counter() - t0)
    print(files["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def select_only(args: argparse.Namespace, select: list[int], targets: list[str] | None, variants: list[str],
                controls: list[str], progress: Progress) -> int:
    """`--seeds none`: variants and controls on the selection seeds only; validation figures, paired per seed.

    An exploration reads nothing but validation, so it can be repeated without spending the confirmation
    seeds; adopting its choice still needs the full protocol. Writes ablation-selection.csv and ablation.md."""
    if not select:
        raise GraspError("--select-seeds: empty; give at least one selection seed, e.g. 0,1,2")
    t0 = time.perf_counter()
    rows = run_ablation(args.params, args.workdir, select, targets, variants, controls, progress,
                        source_order=args.source_order)
    chosen = choose_on_val(rows, variants)
    out: list[str] = [f"Command: `{command_line(args)}`", "",
                      *selection_section(rows, [*variants, *controls], chosen), "",
                      f"Controls (listed, never chosen): {', '.join(controls) or 'none'}. No confirmation seed ran: "
                      "no test accuracy is reported.", ""]
    for variant in variants:
        twin = variant.removeprefix("off:") if variant.startswith("off:") else f"off:{variant}"  # transfer on/off
        others = [m for m in dict.fromkeys(["default", twin, *controls])
                  if m != variant and m in ordered(rows, "method")]
        out += [f"**Paired on seeds {', '.join(map(str, select))}**: validation accuracy of `{variant}` minus each "
                "other, points: mean ± std [min..max] and the seeds where it is ahead.", "",
                *paired_table(rows, variant, others, key="val_accuracy"), ""]
    out.append(f"Wall time: {time.perf_counter() - t0:.0f} s for {len(rows)} runs.")
    md = args.out / "ablation.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(out) + "\n")
    print(md.read_text())
    print(f"wrote {write_csv(rows, args.out / 'ablation-selection.csv')}, {md}")
    return 0
