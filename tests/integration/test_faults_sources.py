"""Fault suite: hostile and broken source checkpoints, refused at `add-source` and at run time.

Ten kinds of bad file, each refused with a message naming it; a pickle payload that would create a
file never runs. At run time `on_bad_source: fail` (default) stops before anything is merged or
registered; `skip` merges the good sources and records every refused file in the lineage.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from flows.pipeline.workspace import Workspace
from grasp_core.checkpoints import CheckpointHeader, load_checkpoint, save_checkpoint
from grasp_core.models import build_model
from tests.conftest import tree, writes_nothing

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]
TARGET = "2022"


def grasp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


class Payload:
    """Unpickling this creates the file `marker`: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _variant(good: Path, out: Path, header_edit: dict | None = None, arch_classes_shape=None,
             poison: float | None = None) -> None:
    model, header = load_checkpoint(good)
    if arch_classes_shape is not None:
        classes, shape = arch_classes_shape
        model = build_model(header.arch, len(classes), shape)
        header = CheckpointHeader(header.arch, len(classes), tuple(classes), shape, header.extra)
    if poison is not None:
        with torch.no_grad():
            next(iter(model.parameters())).view(-1)[0] = poison
    fields = {**header.__dict__, **(header_edit or {})}
    save_checkpoint(model, out, CheckpointHeader(**fields))


def _bad_files(good: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """kind -> a bad checkpoint built from the good source checkpoint `good`."""
    folder.mkdir(parents=True, exist_ok=True)
    _, header = load_checkpoint(good)
    makers: dict[str, Callable[[Path], None]] = {
        "pickle": lambda p: p.write_bytes(pickle.dumps(Payload(marker))),
        "pickle-as-safetensors": lambda p: p.write_bytes(pickle.dumps(Payload(marker))),
        "empty": lambda p: p.write_bytes(b""),
        "truncated": lambda p: p.write_bytes(good.read_bytes()[:-64]),
        "corrupt": lambda p: p.write_bytes(good.read_bytes()[:-5] + bytes(b ^ 0xFF for b in good.read_bytes()[-5:])),
        "other-arch": lambda p: _variant(good, p, header_edit={"arch": "resnet50"}),
        "other-classes": lambda p: _variant(good, p, arch_classes_shape=([*header.classes, "extra"],
                                                                          header.input_shape)),
        "other-shape": lambda p: _variant(good, p, arch_classes_shape=(list(header.classes),
                                                                        (3, *header.input_shape[1:]))),
        "nan": lambda p: _variant(good, p, poison=float("nan")),
        "inf": lambda p: _variant(good, p, poison=float("inf")),
    }
    files = {}
    for kind, make in makers.items():
        path = folder / f"2019-{kind}{'.pt' if kind == 'pickle' else '.safetensors'}"
        make(path)
        files[kind] = path
    return files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace after one successful run (base, sources 2020 and 2021, versions v1 and v2)."""
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("faults-ws")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    done = grasp("run", "--quiet", cwd=ws)
    assert done.returncode == 0, done.stderr[-3000:]
    return ws


def _versions(ws: Path) -> list[dict]:
    from flows.stores.tracking import Tracker

    return Tracker(ws).versions(f"grasp-{TARGET}")


def test_add_source_refuses_each_bad_kind_naming_the_file(workspace, tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = _bad_files(Workspace(workspace).source("2020"), tmp_path / "incoming", marker)
    for kind, path in files.items():
        with writes_nothing(workspace, allow={".grasp/run.lock.guard"}):  # the flock's empty guard file only
            code = main(["add-source", str(path), "--domain", "2019", "--workdir", str(workspace)])
        err = capsys.readouterr().err
        assert code == 2, kind
        assert path.name in err and err.startswith("grasp: error: "), (kind, err)
        assert not Workspace(workspace).source("2019").exists(), kind
    assert not marker.exists(), "a pickle payload ran"


def test_run_fails_on_bad_sources_then_skip_merges_the_rest_and_records_it(workspace, tmp_path):
    marker = tmp_path / "pwned"
    sources = Workspace(workspace).sources
    files = _bad_files(Workspace(workspace).source("2020"), sources, marker)
    _variant(Workspace(workspace).source("2020"), sources / "2023-good.safetensors", poison=0.01)  # one good newcomer
    before = _versions(workspace)
    targets = tree(workspace / "checkpoints" / "targets")

    failed = grasp("run", "--quiet", cwd=workspace)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert f"{len(files)} source checkpoint(s) refused" in failed.stderr
    for path in files.values():
        assert path.name in failed.stderr, path.name
    assert "Traceback" not in failed.stderr
    assert _versions(workspace) == before, "a refused run registers nothing"
    assert tree(workspace / "checkpoints" / "targets") == targets, "a refused run merges nothing"

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump({**params, "on_bad_source": "skip"}))
    skipped = grasp("run", cwd=workspace)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert skipped.stderr.count("skipped a refused source") == len(files)  # progress lines
    after = _versions(workspace)
    new = [v for v in after if v["version"] not in {b["version"] for b in before}]
    assert [v["tags"]["source_domain"] for v in new] == ["2023-good"]
    recorded = yaml.safe_load(new[0]["tags"]["skipped_sources"])  # JSON is YAML
    assert sorted(r["file"] for r in recorded) == sorted(p.name for p in files.values())
    lineage = grasp("lineage", "@challenger", cwd=workspace)
    assert lineage.returncode == 0, lineage.stderr
    assert "refused source files left out" in lineage.stdout and "2019-nan.safetensors" in lineage.stdout
    assert not marker.exists(), "a pickle payload ran"
