"""One frozen RunOptions, built once by the CLI from its flags, and the shared flags declared once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flows.cli import build_parser
from flows.runtime.execution import Compute
from flows.runtime.options import RunOptions
from grasp_core.errors import ConfigError


def test_run_flags_become_one_frozen_options_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRASP_RUNNER", raising=False)
    args = build_parser().parse_args(["run", "--workdir", "ws", "--params", "p.yaml", "--tracking-uri", "sqlite:///x",
                                      "--dvc-remote", "r", "--runner", "dask", "--device", "cpu", "--amp",
                                      "--threads", "3", "--verbose", "--full"])
    opts = RunOptions.from_args(args)
    assert opts == RunOptions(workdir=Path("ws"), params=Path("p.yaml"), tracking_uri="sqlite:///x", dvc_remote="r",
                              runner="dask", device="cpu", amp=True, threads=3, quiet=False, verbose=True, full=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.runner = "local"  # type: ignore[misc]


def test_the_users_runner_default_is_read_at_the_cli_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRASP_RUNNER", "dask=tcp://h:8786")
    assert RunOptions.from_args(build_parser().parse_args(["run"])).runner == "dask=tcp://h:8786"
    assert RunOptions.from_args(build_parser().parse_args(["run", "--runner", "local"])).runner == "local"
    monkeypatch.delenv("GRASP_RUNNER")
    assert RunOptions.from_args(build_parser().parse_args(["run"])).runner == "local"


def test_a_command_without_run_flags_keeps_the_defaults() -> None:
    opts = RunOptions.from_args(build_parser().parse_args(["status", "--workdir", "w", "--model", "grasp-x"]))
    assert (opts.workdir, opts.tracking_uri, opts.device, opts.full) == (Path("w"), None, None, False)


@pytest.mark.parametrize("command", [["run"], ["data"], ["serve", "--cron", "0 3 * * *"], ["promote"], ["lineage"],
                                     ["restore", "@champion"], ["status"], ["export", "--format", "onnx", "--out", "m"],
                                     ["predict", "a.png"]])
def test_shared_flags_mean_the_same_on_every_command(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--workdir", "w", "--params", "q.yaml"])
    assert (args.workdir, args.params) == (Path("w"), Path("q.yaml"))
    defaults = build_parser().parse_args(command)
    assert (defaults.workdir, defaults.params) == (Path("."), Path("params.yaml"))


def test_the_users_compute_and_remote_defaults_are_read_at_the_cli_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRASP_DEVICE", "cpu")
    monkeypatch.setenv("GRASP_AMP", "1")
    monkeypatch.setenv("GRASP_THREADS", "2")
    monkeypatch.setenv("GRASP_DVC_REMOTE", "/r")
    opts = RunOptions.from_args(build_parser().parse_args(["run"]))
    assert (opts.compute, opts.dvc_remote) == (Compute("cpu", True, 2), "/r")
    flags = ["run", "--device", "auto", "--threads", "1", "--dvc-remote", "/q"]
    assert RunOptions.from_args(build_parser().parse_args(flags)).compute == Compute("auto", True, 1)
    for key in ("GRASP_DEVICE", "GRASP_AMP", "GRASP_THREADS", "GRASP_DVC_REMOTE"):
        monkeypatch.delenv(key)
    opts = RunOptions.from_args(build_parser().parse_args(["run"]))
    assert (opts.compute, opts.dvc_remote) == (Compute("auto", False, None), None)


def test_a_bad_amp_default_is_one_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRASP_AMP", "yes")
    with pytest.raises(ConfigError, match="GRASP_AMP='yes' must be 0 or 1"):
        RunOptions.from_args(build_parser().parse_args(["run"]))
