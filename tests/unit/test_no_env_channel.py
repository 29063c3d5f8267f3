"""No environment variable is a channel between our own modules: the user's GRASP_* defaults are read once, by
the CLI (flows/cli.py, flows/runtime/options.py), and travel below it as values (RunOptions, Compute). Tool
settings that configure Prefect, MLflow, DVC, Dask or OpenMP themselves (PREFECT_*, MLFLOW_*, OMP_NUM_THREADS,
...) are not ours and may be set where those tools are started."""

from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[2] / "flows"
ALLOWED = {FLOWS / "cli.py", FLOWS / "runtime" / "options.py"}  # where the user's defaults are read
# Any mapping access under one of our names counts, whatever the mapping is called (`env = os.environ` first)
ACCESS = {"get", "setdefault", "pop", "getenv", "putenv", "unsetenv"}


def _grasp_names(trees: list[ast.AST]) -> set[str]:
    """Names bound anywhere in flows/ to a string "GRASP_..." (`DEVICE_ENV = "GRASP_DEVICE"`, tuples too)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign):
                continue
            targets = [t for target in node.targets
                       for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(targets, values, strict=False):
                if isinstance(target, ast.Name) and _is_grasp_literal(value):
                    names.add(target.id)
    return names


def _is_grasp_literal(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("GRASP_")


def _names_ours(node: ast.AST | None, names: set[str]) -> bool:
    if _is_grasp_literal(node):
        return True
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Attribute) and node.attr in names


def env_uses(tree: ast.AST, names: set[str]) -> list[int]:
    """Line numbers where `tree` reads or writes a mapping (the environment) under one of our GRASP_* names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else ast.unparse(node.func)
            hit = func in ACCESS and bool(node.args) and _names_ours(node.args[0], names)
        elif isinstance(node, ast.Subscript):
            hit = _names_ours(node.slice, names)
        elif isinstance(node, ast.Compare):
            hit = any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and _names_ours(node.left, names)
        elif isinstance(node, ast.Dict):  # {**os.environ, "GRASP_X": ...}: a child's environment
            hit = any(_names_ours(k, names) for k in node.keys)
        else:
            continue
        if hit:
            found.append(node.lineno)
    return found


def _trees() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(FLOWS.rglob("*.py"))}


def test_no_module_below_the_cli_reads_or_writes_our_variables() -> None:
    trees = _trees()
    names = _grasp_names(list(trees.values()))
    uses = [f"{path.relative_to(FLOWS.parent)}:{line}" for path, tree in trees.items() if path not in ALLOWED
            for line in env_uses(tree, names)]
    assert not uses, "GRASP_* settings pass through os.environ below the CLI (pass them as values):\n" + \
        "\n".join(uses)


def test_the_cli_does_read_them_so_the_check_looks_at_real_code() -> None:
    trees = _trees()
    names = _grasp_names(list(trees.values()))
    assert {"DEVICE_ENV", "AMP_ENV", "THREADS_ENV", "RUNNER_ENV", "REMOTE_ENV"} <= names
    assert env_uses(trees[FLOWS / "runtime" / "options.py"], names), "options.py reads the user's defaults"


def test_the_check_catches_every_form_and_leaves_tool_settings_alone() -> None:
    probe = ast.parse(
        'import os\nfrom os import environ\nKNOB = "GRASP_KNOB"\n'
        'a = os.environ.get("GRASP_DEVICE")\n'          # 4
        'os.environ[KNOB] = "1"\n'                       # 5
        'b = os.getenv(options.KNOB, "")\n'              # 6
        'c = "GRASP_AMP" in os.environ\n'                # 7
        'd = {**os.environ, "GRASP_THREADS": "2"}\n'     # 8
        'e = environ.setdefault(KNOB, "x")\n'            # 9
        'env = os.environ\nenv.pop("GRASP_RUNNER")\n'    # 11
        'os.environ.setdefault("OMP_NUM_THREADS", "1")\n'
        'f = os.environ.get("PREFECT_API_URL")\n'
        'g = {**os.environ, "DVC_NO_ANALYTICS": "1"}\n'
        'h = "GRASP_DEVICE"\n')
    assert env_uses(probe, _grasp_names([probe])) == [4, 5, 6, 7, 8, 9, 11]
