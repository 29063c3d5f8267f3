"""flows.prewarm: what `grasp run` imports while its local API server boots, and that it never fails the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import flows.workspace as workspace
from flows.prewarm import DATA_GENERATOR, FLOW_START, flow_start_modules
from grasp_core.config import load_config

SMALL = {"data.domains": 2, "data.image_size": 8}


def test_the_generator_is_imported_ahead_only_when_the_run_will_write_the_data(tmp_params):
    params = tmp_params(SMALL)
    root = params.parent
    assert flow_start_modules(params, root) == FLOW_START + DATA_GENERATOR  # no data yet
    workspace.materialise_data(load_config(params), workspace.Workspace(root))
    assert flow_start_modules(params, root) == FLOW_START  # current: the first task writes nothing
    changed = tmp_params({**SMALL, "data.noise_step": 0.1}, name="other.yaml")
    assert flow_start_modules(changed, root) == FLOW_START + DATA_GENERATOR  # another recipe: written again


def test_a_config_that_does_not_load_adds_nothing(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("sources: {epochs: -1}\n")
    assert flow_start_modules(bad, tmp_path) == FLOW_START
    assert flow_start_modules(tmp_path / "missing.yaml", tmp_path) == FLOW_START


def _in_a_fresh_process(*lines: str) -> None:
    """Run `lines` as a script in a new interpreter (a clean sys.modules); its asserts fail the test."""
    subprocess.run([sys.executable, "-c", "\n".join(("import sys", *lines))], check=True, capture_output=True,
                   timeout=300)


def test_imports_in_order_and_leaves_a_failing_module_to_the_flow():
    _in_a_fresh_process(
        "from flows.prewarm import FLOW_START, import_modules",
        "assert 'prefect.flow_engine' not in sys.modules",
        "import_modules(['no_such_module_grasp', *FLOW_START])",
        "assert all(m in sys.modules for m in FLOW_START) and 'no_such_module_grasp' not in sys.modules")


def test_the_default_arch_never_imports_torchvision():
    _in_a_fresh_process(
        "from grasp_core.models import build_model",
        "from grasp_core.models.adapter import InputSpec",
        "build_model('small_cnn', 3, (1, 8, 8), InputSpec())",
        "assert 'torchvision' not in sys.modules and 'torch._dynamo' not in sys.modules")
