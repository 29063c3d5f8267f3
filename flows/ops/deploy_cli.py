"""The `grasp export` and `grasp predict` commands (argument parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from flows.runtime.options import ops_parents
from grasp_core.errors import GraspError

if TYPE_CHECKING:
    from flows.runtime.options import Subcommands

_REF = re.compile(r"^(@[\w.-]+|v?\d+)$")  # a version number (7, v7) or an alias (@champion)


def register(sub: Subcommands) -> None:
    """Add `grasp export` and `grasp predict` to the top-level sub-parsers."""
    from flows.ops.export import FORMATS, PARITY_ATOL

    export = sub.add_parser("export", parents=ops_parents(),
                            help="export a registered version to ONNX or TorchScript, parity checked",
                            description="Export a version (default @champion) to ONNX or TorchScript, compare its "
                            "logits with the PyTorch model on the target's test split (max |logit diff| <= "
                            f"{PARITY_ATOL:g} and identical predictions, else nothing is written), and log the file, "
                            "parity, size and batch-1 latency on the version's MLflow run (metrics export/<format>/*).")
    export.add_argument("version", nargs="?", default="@champion", help="a version number or @alias")
    export.add_argument("--format", required=True, choices=FORMATS, help="onnx (ONNX Runtime) or torchscript")
    export.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write the model")
    export.add_argument("--json", action="store_true", help="print the report as JSON")
    export.set_defaults(handler=cmd_export)

    predict = sub.add_parser("predict", parents=ops_parents(),
                             help="class and probabilities of images with a registered version",
                             description="Predict image files (or every image under folders) with a version "
                             "(default @champion), through the preprocessing training uses: decoded, converted "
                             "to the model's channels and size, scaled to [0, 1].")
    predict.add_argument("items", nargs="+", metavar="[VERSION|@alias] PATH",
                         help="an optional version number or @alias, then image files or folders")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--onnx", action="store_true", help="run on ONNX Runtime (the version exported on the fly)")
    predict.set_defaults(handler=cmd_predict)


def split_ref(items: list[str]) -> tuple[str, list[Path]]:
    """(version ref, paths): the first item is a ref when it looks like one and is not an existing path."""
    if len(items) > 1 and _REF.match(items[0]) and not Path(items[0]).exists():
        return items[0], [Path(p) for p in items[1:]]
    if _REF.match(items[0]) and not Path(items[0]).exists():
        raise GraspError(f"predict: '{items[0]}' names a version but no images follow; "
                         "usage: grasp predict [VERSION|@alias] PATH...")
    return "@champion", [Path(p) for p in items]


def cmd_export(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.deploy import export_version, format_export
    from grasp_core.config import load_config

    report = export_version(args.workdir, args.tracking_uri, load_config(args.params), args.version, args.format,
                            args.out, args.model)
    print(json.dumps(report, indent=2) if args.json else format_export(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.runtime.settings import apply_defaults

    apply_defaults(args.workdir)
    from flows.ops.predict import format_predictions, predict_paths

    ref, paths = split_ref(args.items)
    result = predict_paths(args.workdir, args.tracking_uri, ref, paths, args.model, onnx=args.onnx)
    print(json.dumps(result, indent=2) if args.json else format_predictions(result))
    return 0
