"""flows/ in rooms, arrows only downward: a module imports only its own room or rooms below it, and no
chain of imports (lazy ones included) comes back to where it started."""

from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[2] / "flows"
# Top to bottom. The design draws bench/ and ops/ side by side, and stores/ beside reports/; bench/ uses
# ops/ (deploy, export) and reports/ read the stores, so each pair is ordered rather than made peers.
ROOMS = ("cli", "bench", "ops", "pipeline", "reports", "stores", "runtime")


def _module(path: Path) -> str:
    rel = path.relative_to(FLOWS.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else "cli"


def _nodes(tree: ast.AST, typing: bool) -> list[ast.AST]:
    """Every node of `tree`; without `typing`, not those under `if TYPE_CHECKING:` (never executed)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if not typing and isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, typing: bool = True) -> set[str]:
    """Every flows module `path` imports, at its top or inside a function (lazy imports count); with `typing`,
    also those imported only for annotations."""
    known = {_module(p) for p in FLOWS.rglob("*.py")}
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), str(path)), typing):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("flows.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flows":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {m for m in found if m in known and m != "flows"}


def _graph(typing: bool = True) -> dict[str, set[str]]:
    return {_module(p): _imports(p, typing) for p in sorted(FLOWS.rglob("*.py"))}


def test_every_module_sits_in_a_known_room() -> None:
    top = {p.name for p in FLOWS.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert top == {"__init__.py", "cli.py", *ROOMS[1:]}, "flows/ holds cli.py and the rooms, nothing else"


def test_imports_point_only_downward() -> None:
    upward = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in sorted(dsts)
              if ROOMS.index(_room(dst)) < ROOMS.index(_room(src))]
    assert not upward, "imports that climb a room:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    """Annotation-only imports (`if TYPE_CHECKING:`) never run, so they cannot close a circle."""
    graph = _graph(typing=False)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in graph:
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The rules above catch what they claim to: a runtime module importing the pipeline is upward."""
    assert ROOMS.index(_room("flows.pipeline.run")) < ROOMS.index(_room("flows.runtime.lock"))
    assert _room("flows.cli") == "cli" and _room("flows.bench") == "bench"
    probe = tmp_path / "probe.py"
    probe.write_text("from flows.runtime import lock\nimport flows.pipeline.run\n"
                     "def f():\n    from flows.stores.tracking import Tracker\n"
                     "if TYPE_CHECKING:\n    from flows.ops.status import status\n")
    ran = {"flows.runtime.lock", "flows.runtime", "flows.pipeline.run", "flows.stores.tracking"}
    assert _imports(probe, typing=False) == ran
    assert _imports(probe) == ran | {"flows.ops.status"}


MAX_LINES = 400  # issue 20: a module over this is split by idea


def _long_modules(root: Path) -> list[str]:
    return sorted(f"{path.relative_to(root.parent)}: {n} lines" for path in root.rglob("*.py")
                  if (n := len(path.read_text().splitlines())) > MAX_LINES)


def test_no_module_of_flows_or_grasp_core_is_over_400_lines(tmp_path: Path) -> None:
    probe = tmp_path / "pkg"
    probe.mkdir()
    (probe / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (probe / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert _long_modules(probe) == [f"pkg/long.py: {MAX_LINES + 1} lines"]  # the check can fail
    assert _long_modules(FLOWS) + _long_modules(FLOWS.parent / "grasp_core") == []
