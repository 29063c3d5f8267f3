"""flows/ uses Prefect, MLflow, DVC and GX through their public APIs only: no underscore names of those
packages (imported or reached as attributes), no private modules, no private environment variables, and
nothing read from or written into DVC's storage layout (cache, remote, tmp) by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

FLOWS = Path(__file__).resolve().parents[2] / "flows"
TOOLS = ("prefect", "prefect_dask", "mlflow", "dvc", "dvc_objects", "dvc_data", "great_expectations")
# text that only private plumbing needs: Prefect's private env vars, its ephemeral server class, hard links,
# and DVC's storage layout (`.dvc/cache`, `files/md5/<2 hex>/<rest>` in a cache or a local remote, a tool's tmp):
# DVC's CLI and dvc.api read and write those, grasp asks them
BANNED_TEXT = (re.compile(r"PREFECT__\w+"), re.compile(r"SubprocessASGIServer"), re.compile(r"\bos\.link\("),
               re.compile(r"prefect\.server\.api\.server"),
               re.compile(r"""\.dvc["']?\s*/\s*["'](cache|tmp)\b|\.dvc/(cache|tmp)\b"""),
               re.compile(r"""\bfiles["']?\s*/\s*["']?md5\b"""), re.compile(r"\[:2\]\s*/\s*\w+\[2:\]"))


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


def plumbing(source: str) -> list[str]:
    """Every BANNED_TEXT match in `source`."""
    return [m.group(0) for pattern in BANNED_TEXT for m in pattern.finditer(source)]


@pytest.mark.parametrize("snippet", [
    'root / "files" / "md5" / md5[:2] / md5[2:]',  # an object path in a cache or a local remote
    'Path(url) / "files/md5"',
    'remote / md5[:2] / md5[2:]',  # the same, sharded by hand
    'ws / ".dvc" / "cache"',  # DVC's cache folder
    'f"{ws}/.dvc/cache/files"',
    'ws / ".dvc" / "tmp" / "grasp-track"',  # our own files inside DVC's tmp folder
    'os.environ["PREFECT__SERVER_EPHEMERAL"] = "1"',
    "os.link(src, dst)",
])
def test_the_scanner_catches_tool_plumbing_in_text(snippet: str) -> None:
    assert plumbing(snippet), snippet


def test_the_scanner_leaves_dvc_files_and_commands_alone() -> None:
    good = 'ws / "data.dvc"\n("cache", "dir", cache_dir(ws))\nPath(".grasp") / "dvc-track"\nmd5[:8]\n'
    assert plumbing(good) == []


@pytest.mark.parametrize("path", sorted(FLOWS.rglob("*.py")), ids=lambda p: p.relative_to(FLOWS).as_posix())
def test_flows_use_only_public_tool_apis(path: Path) -> None:
    source = path.read_text()
    assert private_references(source) == [], f"{path}: private tool references"
    assert plumbing(source) == [], f"{path}: private plumbing"
