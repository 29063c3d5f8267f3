"""How and where a run computes, as given on the command line: argument types and the options every command
shares, declared once as argparse parent parsers (`grasp run --help` and `grasp status --help` list the same
`--workdir`, because it is the same argument)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from flows.runtime.execution import Compute
from grasp_core.errors import ConfigError

if TYPE_CHECKING:
    # what `add_subparsers()` returns; each command module's `register(sub)` adds its parsers to it
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db)"
DVC_HELP = "DVC remote URL or folder (default: $GRASP_DVC_REMOTE, else <workdir>/.dvc-remote)"
# The user's defaults for where/how knobs; read by RunOptions.from_args only
DEVICE_ENV, AMP_ENV, THREADS_ENV = "GRASP_DEVICE", "GRASP_AMP", "GRASP_THREADS"
RUNNER_ENV, REMOTE_ENV = "GRASP_RUNNER", "GRASP_DVC_REMOTE"


@dataclass(frozen=True)
class RunOptions:
    """Where and how one `grasp` command runs (never what: that is params.yaml). Built once, by the CLI from its
    flags (and the user's GRASP_* defaults, read there and only there), then passed down unchanged."""

    workdir: Path = Path(".")
    params: Path = Path("params.yaml")
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db
    dvc_remote: str | None = None  # None: <workdir>/.dvc-remote (from_args: --dvc-remote, else $GRASP_DVC_REMOTE)
    runner: str = "local"  # local | dask | dask=tcp://HOST:PORT (flows/runtime/runners.py)
    device: str | None = None  # auto | cpu | cuda | mps; None: auto (from_args: --device, else $GRASP_DEVICE)
    amp: bool = False  # from_args: --amp, else $GRASP_AMP=1
    threads: int | None = None  # from_args: --threads, else $GRASP_THREADS; None: flows.runtime.execution
    quiet: bool = False
    verbose: bool = False
    full: bool = False  # merge every source from scratch instead of starting from the champion

    @property
    def compute(self) -> Compute:
        """Where and how the core computes (handed to every task as a value)."""
        return Compute(self.device or "auto", self.amp, self.threads)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """The options of parsed `args`; a flag a command does not take keeps its default, or the user's
        GRASP_* default from the environment (read here and nowhere below the CLI)."""
        a, env = vars(args), os.environ  # the only reads of the user's GRASP_* variables (and _env_* below)
        return cls(workdir=a.get("workdir") or Path("."), params=a.get("params") or Path("params.yaml"),
                   tracking_uri=a.get("tracking_uri"), dvc_remote=a.get("dvc_remote") or env.get(REMOTE_ENV) or None,
                   runner=a.get("runner") or env.get(RUNNER_ENV, "") or "local",
                   device=a.get("device") or env.get(DEVICE_ENV) or None, amp=bool(a.get("amp")) or _env_amp(),
                   threads=a.get("threads") or _env_threads(), quiet=bool(a.get("quiet")),
                   verbose=bool(a.get("verbose")), full=bool(a.get("full")))


def _env_amp() -> bool:
    value = os.environ.get(AMP_ENV, "0").strip().lower()
    if value not in ("0", "1", "false", "true", ""):
        raise ConfigError(f"{AMP_ENV}={value!r} must be 0 or 1")
    return value in ("1", "true")


def _env_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_ENV}={value!r} must be a whole number >= 1 (torch CPU threads)")
    return int(value)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def workspace_args(params_help: str = "params.yaml to read") -> argparse.ArgumentParser:
    """--workdir and --params."""
    parser = _parent()
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help=params_help)
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="project folder holding data/ and checkpoints/ (default: current directory)")
    return parser


def progress_args() -> argparse.ArgumentParser:
    """--quiet and --verbose."""
    parser = _parent()
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--verbose", action="store_true", help="a progress line for every epoch")
    return parser


def tracking_args(model: bool = True) -> argparse.ArgumentParser:
    """--tracking-uri, and --model (the registered model) unless `model` is False."""
    parser = _parent()
    if model:
        parser.add_argument("--model", help="registered model name (default: the only grasp-* model)")
    parser.add_argument("--tracking-uri", help=TRACKING_HELP)
    return parser


def dvc_args() -> argparse.ArgumentParser:
    """--dvc-remote."""
    parser = _parent()
    parser.add_argument("--dvc-remote", help=DVC_HELP)
    return parser


def lock_args(default_s: float) -> argparse.ArgumentParser:
    """--lock-wait, defaulting to `default_s` seconds."""
    parser = _parent()
    parser.add_argument("--lock-wait", type=seconds, default=default_s, metavar="SECONDS",
                        help=f"wait this long for another grasp command holding the workspace, then exit 75 "
                        f"(default {default_s:g})")
    return parser


def json_file_args(what: str = "the rows") -> argparse.ArgumentParser:
    """--json FILE."""
    parser = _parent()
    parser.add_argument("--json", type=Path, metavar="FILE", help=f"also write {what} as JSON")
    return parser


def bench_output_args(what: str = "the rows") -> argparse.ArgumentParser:
    """What every benchmark takes: --json FILE and --quiet."""
    parser = json_file_args(what)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def ops_parents() -> list[argparse.ArgumentParser]:
    """What every registry command takes: the workspace, the tracking store and the model name."""
    return [workspace_args(), tracking_args()]
