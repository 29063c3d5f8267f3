"""flows.stores.versioning against real git + DVC in temporary workspaces: what DVC stored, not just return values."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from flows.stores.dvc_audit import file_md5_in_dir, verify
from flows.stores.versioning import VersioningError, ensure_repo, git_commit, push_tracked, read_dvc_hash, track

pytestmark = pytest.mark.integration

PROJECT_GITIGNORE = "/data/\n/checkpoints/\n"  # the grasp repo ignores both; their .dvc files must still work


def make_workspace(ws: Path, gitignore: str | None = None) -> Path:
    """2 domains x 3 splits x 2 classes x 2 PNGs, one source checkpoint, a params.yaml."""
    for d, domain in enumerate(("2020", "2021")):
        for split in ("train", "val", "test"):
            for label in ("0", "1"):
                folder = ws / "data" / domain / split / label
                folder.mkdir(parents=True)
                for i in range(2):
                    Image.new("L", (4, 4), color=10 * d + 3 * i + int(label)).save(folder / f"{i}.png")
    (ws / "checkpoints" / "sources").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(ws / "checkpoints" / "sources" / "a.safetensors"))
    (ws / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "transfer": {"policy": "paper", "threshold": 0.3}}))
    if gitignore is not None:
        (ws / ".gitignore").write_text(gitignore)
    return ws


def dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )


def is_git_ignored(ws: Path, rel: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", rel], cwd=ws).returncode == 0


def test_add_now_push_later_and_one_batch_for_a_new_repo(tmp_path, monkeypatch):
    """The flow's split: `dvc add` (with init, config and remote in the same DVC process), then a push."""
    import flows.stores.versioning as versioning

    ws = make_workspace(tmp_path / "ws")
    batches: list[tuple] = []
    real = versioning._dvc
    monkeypatch.setattr(versioning, "_dvc", lambda w, *commands: (batches.append(commands), real(w, *commands)))
    added = track(ws, "data", first=ensure_repo(ws, defer=True), push=False)
    assert [[c[0] for c in b] for b in batches] == [["init", "config", "remote", "add"]]
    objects = ws / ".dvc-remote" / "files" / "md5"
    assert (ws / ".dvc" / "cache" / "files" / "md5" / added.md5[:2] / added.md5[2:]).is_file()
    assert not (objects / added.md5[:2] / added.md5[2:]).exists()  # added, not pushed
    assert track(ws, "data", push=False) == added and len(batches) == 1  # unchanged: no DVC process
    assert push_tracked(ws, added) == added and [c[0] for c in batches[-1]] == ["push"]  # through DVC itself
    status = dvc(ws, "status", "--cloud", "data.dvc")  # DVC sees every object on the remote
    assert status.returncode == 0 and "in sync" in status.stdout, status.stdout + status.stderr
    assert track(ws, "data") == added and push_tracked(ws, added) == added and len(batches) == 2  # unchanged
    clean = dvc(ws, "status", "--json")  # no stage that never ran: the workspace is clean
    assert clean.returncode == 0 and json.loads(clean.stdout) == {}, clean.stdout

    (ws / ".dvc" / "config").write_text((ws / ".dvc" / "config").read_text().replace("url = ", "url = s3://b/"))
    stamp = ws / ".grasp" / "dvc-track" / "data.json"
    recorded = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**recorded, "remote": "s3://b/../.dvc-remote", "pushed": False}))
    monkeypatch.setattr(versioning, "_dvc", lambda w, *commands: batches.append(commands))
    push_tracked(ws, added)  # an object store cannot be checked cheaply: only the stamp says pushed or not
    assert [c[0] for c in batches[-1]] == ["push"]


def test_a_failed_batch_names_the_dvc_command(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ensure_repo(ws)
    with pytest.raises(VersioningError, match=r"`dvc add no-such-folder` failed"):
        from flows.stores.versioning import _dvc

        _dvc(ws, ("config", "core.autostage", "false"), ("add", "no-such-folder"), ("push",))


def test_track_pushes_rehashes_and_verifies_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where DVC's analytics daemon would leave its reports
    (tmp_path / "tmp").mkdir()
    ws = make_workspace(tmp_path / "ws")
    ensure_repo(ws)
    ensure_repo(ws)
    config = (ws / ".dvc" / "config").read_text()
    assert (ws / ".git").is_dir() and "analytics = false" in config and config.count('remote "local"') == 1
    assert "url = ../.dvc-remote" in config and is_git_ignored(ws, ".dvc-remote")

    data = track(ws, "data")
    assert data.path == ws / "data.dvc" and data.md5.endswith(".dir") and data.nfiles == 24
    assert read_dvc_hash(ws / "data.dvc") == data.md5
    objects = ws / ".dvc-remote" / "files" / "md5"
    manifest = json.loads((objects / data.md5[:2] / data.md5[2:]).read_text())
    assert len(manifest) == 24 and all((objects / e["md5"][:2] / e["md5"][2:]).is_file() for e in manifest)
    assert track(ws, "data") == data
    shutil.rmtree(ws / ".grasp" / "dvc-track")  # force the real `dvc add` + `dvc push` path
    assert track(ws, "data") == data

    png = ws / "data" / "2021" / "val" / "1" / "0.png"
    Image.new("L", (4, 4), color=200).save(png)
    assert verify(ws, data.path) == ["data/2021/val/1/0.png"]
    changed = track(ws, "data")
    assert changed.md5 != data.md5 and changed.nfiles == 24 and verify(ws, changed.path) == []
    assert file_md5_in_dir(ws, changed.path, "data/2021/val/1/0.png") == hashlib.md5(png.read_bytes()).hexdigest()

    sources = track(ws, "checkpoints/sources")
    checkpoint = ws / "checkpoints" / "sources" / "a.safetensors"
    assert sources.path == ws / "checkpoints" / "sources.dvc" and sources.nfiles == 1
    assert file_md5_in_dir(ws, sources.path, "a.safetensors") == hashlib.md5(checkpoint.read_bytes()).hexdigest()
    assert file_md5_in_dir(ws, sources.path, "missing.safetensors") is None
    assert verify(ws, sources.path) == []
    checkpoint.write_bytes(b"\0" * checkpoint.stat().st_size)
    assert verify(ws, sources.path) == ["checkpoints/sources/a.safetensors"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_params_diff_shows_the_changed_key_after_a_commit(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ensure_repo(ws)
    files = ["params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]
    sha = git_commit(ws, files, "params v1")
    assert sha and len(sha) == 40 and git_commit(ws, files, "nothing new") is None
    (ws / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "transfer": {"policy": "paper", "threshold": 0.5}}))
    out = dvc(ws, "params", "diff", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"params.yaml": {"transfer.threshold": {"old": 0.3, "new": 0.5, "diff": 0.2}}}


def test_subfolder_of_a_git_repo_with_the_project_gitignore(tmp_path, monkeypatch):
    outer = tmp_path / "outer"
    ws = make_workspace(outer / "proj", gitignore=PROJECT_GITIGNORE)
    (ws / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run(["git", "init", "-q"], cwd=outer, check=True)
    remote = tmp_path / "remote"
    ensure_repo(ws, remote=str(remote))
    assert not (ws / ".git").exists() and (ws / ".dvc").is_dir() and not (outer / ".dvc").exists()
    assert (ws / "dvc.yaml").read_text() == "stages: {}\n"  # an existing dvc.yaml is left alone

    data, sources = track(ws, "data"), track(ws, "checkpoints/sources")
    assert data.path == ws / "data.dvc" and (remote / "files" / "md5" / data.md5[:2] / data.md5[2:]).is_file()
    # `/checkpoints/` hides checkpoints/sources.dvc from git, so the .dvc file moves to the root
    assert sources.path == ws / "checkpoints-sources.dvc" and not is_git_ignored(ws, sources.path.name)
    assert git_commit(ws, [data.path.name, sources.path.name, ".dvc/config"], "track data and sources")
    out = dvc(ws, "status", data.path.name, sources.path.name)
    assert out.returncode == 0 and "up to date" in out.stdout, out.stdout + out.stderr

    ensure_repo(ws, str(tmp_path / "remote2"))  # a new remote (--dvc-remote / $GRASP_DVC_REMOTE) re-points it
    assert f"url = {tmp_path / 'remote2'}" in (ws / ".dvc" / "config").read_text()


def test_errors_name_the_path_and_dvc_last_line(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(VersioningError, match=r"ws/nothing: nothing to track"):
        track(ws, "nothing")
    with pytest.raises(VersioningError, match=r"`dvc add data` failed: .*not inside of a DVC repository"):
        track(ws, "data")


@pytest.mark.faults
def test_a_truncated_stamp_is_rebuilt_and_temporaries_never_enter_the_snapshot(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    first = track(ws, "checkpoints/sources", first=ensure_repo(ws, defer=True))
    assert ".*.tmp" in (ws / ".dvcignore").read_text().splitlines()
    stamp = next((ws / ".grasp" / "dvc-track").glob("*.json"))
    stamp.write_text(stamp.read_text()[:7])  # a crash mid-write (before writes were atomic)
    leftover = ws / "checkpoints" / "sources" / ".b.safetensors.4242.tmp"
    leftover.write_bytes(b"half a checkpoint")  # what a SIGKILL mid-write can leave
    again = track(ws, "checkpoints/sources")
    assert again.md5 == first.md5 and again.nfiles == first.nfiles == 1  # the temporary is not in the snapshot
    assert json.loads(stamp.read_text())["md5"] == first.md5  # rebuilt, whole
    manifest = ws / ".dvc" / "cache" / "files" / "md5" / first.md5[:2] / first.md5[2:]
    assert [e["relpath"] for e in json.loads(manifest.read_text())] == ["a.safetensors"]
