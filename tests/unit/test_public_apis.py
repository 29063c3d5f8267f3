"""flows/ uses Prefect, MLflow, DVC and GX through their public APIs only: no underscore names of those
packages (imported or reached as attributes), no private modules, no private environment variables, and
nothing written into DVC's storage layout by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

FLOWS = Path(__file__).resolve().parents[2] / "flows"
TOOLS = ("prefect", "prefect_dask", "mlflow", "dvc", "dvc_objects", "dvc_data", "great_expectations")
# text that only private plumbing needs: Prefect's private env vars, its ephemeral server class, hard links
BANNED_TEXT = (re.compile(r"PREFECT__\w+"), re.compile(r"SubprocessASGIServer"), re.compile(r"\bos\.link\("),
               re.compile(r"prefect\.server\.api\.server"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _tool(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in TOOLS


def private_references(source: str) -> list[str]:
    """Every private reference to a tool in `source`: `from tool[._x] import _y`, `import tool._x`, and
    `alias._y` / `alias.sub._y` on a name bound to a tool module (or on `_mlflow()`, flows.stores.tracking's import)."""
    tree = ast.parse(source)
    found, aliases = [], {"_mlflow"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _tool(a.name):
                    aliases.add((a.asname or a.name).split(".")[0])
                    found += [f"import {a.name}"] if any(map(_is_private, a.name.split("."))) else []
        elif isinstance(node, ast.ImportFrom) and _tool(node.module):
            assert node.module is not None
            if any(map(_is_private, node.module.split("."))):
                found.append(f"from {node.module} import ...")
            found += [f"from {node.module} import {a.name}" for a in node.names if _is_private(a.name)]
            aliases |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and _root(node) in aliases:
            found.append(f"{_root(node)}...{node.attr}")
    return found


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("snippet", [
    "from mlflow.tracking._tracking_service.utils import use_it",  # a private module
    "from mlflow.utils.requirements_utils import _init_packages_to_modules_map",  # a private name
    "import prefect.server._x",
    "import mlflow\nmlflow.tracking._get_store()",  # reached as an attribute
    "from prefect import settings as s\ns._secret",
    "_mlflow()._private",  # flows.stores.tracking's lazy import of mlflow
])
def test_the_scanner_catches_each_kind_of_private_reference(snippet: str) -> None:
    assert len(private_references(snippet)) == 1


def test_the_scanner_leaves_public_calls_and_our_own_attributes_alone() -> None:
    good = "import mlflow\nfrom prefect import flow\nmlflow.set_tracking_uri('x')\nobj._own_attr\nflow.__name__\n"
    assert private_references(good) == []


@pytest.mark.parametrize("path", sorted(FLOWS.rglob("*.py")), ids=lambda p: p.relative_to(FLOWS).as_posix())
def test_flows_use_only_public_tool_apis(path: Path) -> None:
    source = path.read_text()
    assert private_references(source) == [], f"{path}: private tool references"
    texts = [m.group(0) for pattern in BANNED_TEXT for m in pattern.finditer(source)]
    assert texts == [], f"{path}: private plumbing"
