"""The check `grasp run` makes before Prefect starts: the merge plan's own decision read without writing, and the
record of the last good run compared with the workspace as it is now (the tools' part: tests/integration)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from flows.pipeline.plan import nothing_to_merge, plan_merge
from flows.pipeline.up_to_date import (
    RECORD,
    forget,
    inputs_now,
    recalled,
    remember,
    same_params_as_last_run,
    unchanged_inputs,
)
from flows.runtime.options import RunOptions
from grasp_core.config import load_config


def _tags(stage: int, sha: str, parent: str, params: str = "p") -> dict[str, str]:
    return {"stage": str(stage), "source_sha256": sha, "parent_version": parent, "params_sha256": params}


class Registry:
    """The registry reads and writes the merge plan makes, over versions 1-2 (the champion, sources a and b)."""

    def __init__(self) -> None:
        self.versions_ = [{"version": "1", "run_id": "r1", "aliases": [], "tags": _tags(0, "a", "")},
                          {"version": "2", "run_id": "r2", "aliases": ["champion"], "tags": _tags(1, "b", "1")}]
        self.states = {"r1": ("FINISHED", "p1"), "r2": ("FINISHED", "p1"), "p1": ("FINISHED", "")}
        self.dead: list[str] = []
        self.ended: list[str] = []

    def versions(self, model_name):
        return self.versions_

    def run_states(self):
        return self.states

    def get_alias_version(self, model_name, alias):
        return next((v["version"] for v in self.versions_ if alias in v["aliases"]), None)

    def dead_runs(self):
        return list(self.dead)

    def end_dead_runs(self):
        self.ended, self.dead = self.dead, []
        return self.ended


def test_nothing_to_merge_when_the_champion_holds_every_source_and_the_plan_agrees(tmp_path):
    registry = Registry()
    assert nothing_to_merge(registry, "m", {"a", "b"}, "p") == ("2", "2", 2)
    assert registry.ended == []  # read-only

    class Source:  # what plan_merge reads of an area source
        def __init__(self, sha: str) -> None:
            self.checkpoint = type("Ckpt", (), {"sha256": sha})()

    plan = plan_merge(registry, "m", [Source("a"), Source("b")], tmp_path, params_sha256="p")  # type: ignore[list-item]
    assert (plan.to_merge, plan.resumed, plan.ended_runs, plan.parent_version) == ([], False, (), "2")


def test_a_new_source_a_missing_champion_or_a_dead_run_means_the_flow_runs():
    assert nothing_to_merge(Registry(), "m", {"a", "b", "c"}, "p") is None  # c is new
    no_champion = Registry()
    no_champion.versions_[1]["aliases"] = []
    assert nothing_to_merge(no_champion, "m", {"a", "b"}, "p") is None
    killed = Registry()
    killed.dead = ["p9"]  # a SIGKILLed run's parent, still RUNNING: the flow ends it
    assert nothing_to_merge(killed, "m", {"a", "b"}, "p") is None and killed.dead == ["p9"]


def test_an_interrupted_run_to_resume_means_the_flow_runs():
    """Version 3 extends the champion, has no alias and its run was KILLED: the flow resumes from it."""
    registry = Registry()
    registry.versions_.append({"version": "3", "run_id": "r3", "aliases": [], "tags": _tags(2, "c", "2")})
    registry.states.update(r3=("FINISHED", "p2"), p2=("KILLED", ""))
    assert nothing_to_merge(registry, "m", {"a", "b", "c"}, "p") is None
    # without c, version 3 cannot be resumed (as in the flow's plan) and the champion lacks nothing
    assert nothing_to_merge(registry, "m", {"a", "b"}, "p") == ("2", "2", 2)


@pytest.fixture
def workspace(tmp_path: Path):
    ws = tmp_path / "ws"
    for rel in ("data/2020/train/0/x.png", "checkpoints/base.safetensors", "checkpoints/sources/2020.safetensors"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(b"x")
    (ws / "params.yaml").write_text(yaml.safe_dump({"seed": 3}))
    opts = RunOptions(ws, ws / "params.yaml", tracking_uri=f"sqlite:///{ws}/mlflow.db")
    now = inputs_now(ws, load_config(opts.params), opts.tracking_uri or "")
    remember(ws, replace(now, model_name="grasp-2021", area_shas=("sha",)))
    return ws, opts


def test_the_record_matches_an_unchanged_workspace(workspace):
    ws, opts = workspace
    found = unchanged_inputs(opts, load_config(opts.params))
    assert found is not None and found.model_name == "grasp-2021" and found.area_shas == ("sha",)


@pytest.mark.parametrize("change", ["data", "source", "new source", "base", "params", "store", "forgotten"])
def test_any_changed_input_or_a_dropped_record_means_the_flow_runs(workspace, change):
    ws, opts = workspace
    if change == "data":
        os.utime(ws / "data/2020/train/0/x.png", ns=(1, 1))  # same size, same bytes: the mtime tells
    elif change == "source":
        (ws / "checkpoints/sources/2020.safetensors").write_bytes(b"y")
    elif change == "new source":
        (ws / "checkpoints/sources/2021b.safetensors").write_bytes(b"z")
    elif change == "base":
        (ws / "checkpoints/base.safetensors").unlink()
    elif change == "params":
        (ws / "params.yaml").write_text(yaml.safe_dump({"seed": 4}))
    elif change == "store":
        opts = RunOptions(ws, opts.params, tracking_uri=f"sqlite:///{ws}/other.db")
    else:
        forget(ws)
    assert unchanged_inputs(opts, load_config(opts.params)) is None
    # before the lock the CLI compares the params, code and store only (whether to check plugin names)
    assert same_params_as_last_run(opts, load_config(opts.params)) == (change in ("data", "source", "new source",
                                                                                  "base"))


@pytest.mark.parametrize("text", ["", "{", '{"format": 99}', '{"format": 1, "params_sha256": "x"}', "[]"])
def test_an_unreadable_record_recalls_nothing(tmp_path, text):
    (tmp_path / RECORD).parent.mkdir(parents=True)
    (tmp_path / RECORD).write_text(text)
    assert recalled(tmp_path) is None


def test_the_flows_recorded_answer_stands_only_while_the_store_file_is_unchanged(tmp_path):
    from flows.pipeline.up_to_date import RunInputs, _registry_holds_all, _store_fingerprint

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00")
    recorded = RunInputs("p", "c", f"sqlite:///{db}", "d", "b", "s", "grasp-2021", ("sha",),
                         (_store_fingerprint(db), "2", "2", 3))
    remember(tmp_path, recorded)
    assert recalled(tmp_path) == recorded
    assert _registry_holds_all(RunOptions(tmp_path), recorded) == ("2", "2", 3)  # the store is not even opened
    os.utime(db, ns=(1, 1))  # any write to the store (an alias moved, a run started) changes its fingerprint
    assert _store_fingerprint(db) != recorded.decision[0]


def test_the_checks_paths_are_the_workspaces(tmp_path):
    from flows.pipeline.up_to_date import BASE_FILE, SOURCES_DIR
    from flows.pipeline.workspace import Workspace

    ws = Workspace(tmp_path)
    assert (ws.base, ws.sources) == (tmp_path / BASE_FILE, tmp_path / SOURCES_DIR)


def _relpath_fingerprint(path: Path) -> str:
    """The fingerprint as written before it sliced paths (os.path.relpath per file): stamps must stay valid."""
    import hashlib

    digest = hashlib.sha256()
    walk = [(str(path.parent), [], [path.name])] if path.is_file() else os.walk(path)
    for root, dirs, files in walk:
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return digest.hexdigest()


def test_the_fingerprint_is_the_one_stamps_recorded_and_held_within_a_check(workspace, monkeypatch):
    from flows.stores.fingerprints import fingerprint, fingerprints_held

    ws, _ = workspace
    (ws / "data" / "2020" / "val").mkdir()
    (ws / "data" / "2020" / "val" / "y.png").write_bytes(b"yy")
    monkeypatch.chdir(ws)
    for path in (ws / "data", Path("data"), Path("."), ws / "checkpoints" / "base.safetensors"):
        assert fingerprint(path) == _relpath_fingerprint(path), path
    with fingerprints_held():
        held = fingerprint(ws / "data")
        (ws / "data" / "2020" / "val" / "y.png").write_bytes(b"yyy")
        assert fingerprint(Path("data")) == held  # the same folder, asked again within the check
    assert fingerprint(ws / "data") != held


@pytest.fixture
def fresh_code_identity():
    """`code_identity` is cached per process: computed anew inside the test, and again after it."""
    from flows.pipeline.up_to_date import code_identity

    code_identity.cache_clear()
    yield code_identity
    code_identity.cache_clear()


def test_a_docs_only_commit_keeps_nothing_new_a_py_change_in_grasp_core_does_not(workspace, fresh_code_identity,
                                                                                   monkeypatch, tmp_path):
    import shutil

    from flows.pipeline import up_to_date

    ws, opts = workspace
    monkeypatch.setattr("flows.runtime.settings.code_commit", lambda: "0" * 40)  # a new commit, the same .py files
    assert unchanged_inputs(opts, load_config(opts.params)) is not None
    fresh_code_identity.cache_clear()
    copy = tmp_path / "code"
    roots = [Path(shutil.copytree(root, copy / root.name, ignore=shutil.ignore_patterns("__pycache__")))
             for root in up_to_date.code_roots()]
    monkeypatch.setattr(up_to_date, "code_roots", lambda: roots)
    assert unchanged_inputs(opts, load_config(opts.params)) is not None  # the same files elsewhere: same code
    fresh_code_identity.cache_clear()
    with (copy / "grasp_core" / "transfer.py").open("a") as f:
        f.write("\n# one more line\n")
    assert unchanged_inputs(opts, load_config(opts.params)) is None


def test_the_code_digest_covers_every_py_file_and_nothing_else(tmp_path):
    from flows.pipeline.up_to_date import code_digest

    files = {"grasp_core/__init__.py": "", "grasp_core/transfer.py": "x = 1\n", "flows/cli.py": "y = 2\n",
             "grasp_core/data/notes.md": "docs\n", "docs/operations.md": "docs\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    roots = [tmp_path / "grasp_core", tmp_path / "flows"]
    before = code_digest(roots)
    (tmp_path / "docs/operations.md").write_text("changed\n")
    (tmp_path / "grasp_core/data/notes.md").write_text("changed\n")
    assert code_digest(roots) == before
    (tmp_path / "flows/cli.py").rename(tmp_path / "flows/main.py")  # same bytes, another module
    assert code_digest(roots) != before
    (tmp_path / "flows/main.py").rename(tmp_path / "flows/cli.py")
    (tmp_path / "grasp_core/extra.py").write_text("")  # an empty new module counts
    assert code_digest(roots) != before
    (tmp_path / "grasp_core/extra.py").unlink()
    assert code_digest(roots) == before
