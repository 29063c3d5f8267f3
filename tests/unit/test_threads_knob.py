"""`--threads` / GRASP_THREADS / OMP_NUM_THREADS: how many torch threads train and merge (flows.runtime.execution).
GRASP_THREADS is read by RunOptions.from_args (the CLI) only; below it the count travels as Compute.threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.cli import build_parser
from flows.runtime import execution
from flows.runtime.execution import Compute
from flows.runtime.options import THREADS_ENV, RunOptions
from grasp_core.errors import ConfigError

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch):
    for key in (THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_default_leaves_one_core_to_the_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert execution.default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert execution.default_threads() == 1
    execution.apply_threads(Compute())
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 1  # torch already imported here: this thread follows at once


def _compute(*argv: str) -> Compute:
    return RunOptions.from_args(build_parser().parse_args(["run", *argv])).compute


def test_flag_beats_env_and_user_omp_stands_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    execution.apply_threads(_compute())
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv(THREADS_ENV, "2")
    assert _compute().threads == 2
    execution.apply_threads(_compute())
    assert os.environ["OMP_NUM_THREADS"] == "2"
    assert _compute("--threads", "1").threads == 1
    execution.apply_threads(_compute("--threads", "1"))
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ[THREADS_ENV] == "2", "the user's variable is read, never written"


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_env_value_is_one_error_naming_it(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(THREADS_ENV, bad)
    with pytest.raises(ConfigError, match=f"GRASP_THREADS='{bad}' must be a whole number >= 1"):
        _compute()


def test_every_torch_thread_of_a_cli_process_gets_the_count() -> None:
    """Set before torch loads, the count holds for worker threads too (Prefect's task threads)."""
    code = ("from flows.runtime import execution; execution.apply_threads(execution.Compute(threads=1))\n"
            "import threading, torch\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append(torch.get_num_threads())); t.start(); t.join()\n"
            "print(torch.get_num_threads(), seen[0])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", THREADS_ENV)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_cli_refuses_a_bad_flag(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--threads", "0"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 2 and "--threads: '0' is not a whole number >= 1" in out.stderr
