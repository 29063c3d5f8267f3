"""Fault suite (unit tier): names that would escape their folder, edited headers, forged claims, oversize
files and a busy workspace. Each case asserts what was refused AND that nothing was written anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest
import torch

from flows.cli import main
from flows.pipeline.source_ledger import lineage_tags, record_source
from flows.pipeline.sources import add_source, scan_area
from flows.pipeline.workspace import Workspace
from flows.runtime.lock import LOCK_NAME
from grasp_core.checkpoints import (
    CheckpointHeader,
    CheckpointMismatchError,
    CheckpointTooLargeError,
    file_sha256,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from grasp_core.config import LimitsConfig
from grasp_core.models import build_model
from grasp_core.names import UnsafeNameError, check_name, path_inside
from tests.conftest import writes_nothing

pytestmark = pytest.mark.faults

HOSTILE = ["../../escaped", "../x", "..", ".", "/etc/passwd", "a/b", "a\\b", ".hidden", "-flag", "a..b", "", " ",
           "a b", "x\x00y", "ünïcode", "a" * 101, "~root", "$HOME", "name\n"]
HEADER = CheckpointHeader("small_cnn", 3, ("0", "1", "2"), (1, 8, 8), {"role": "base"})


def _tree(root: Path) -> dict[str, int]:
    """Every file under `root` with its size: the before/after picture of "nothing written"."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A workspace holding only a base checkpoint (what add-source and the area scan check against)."""
    torch.manual_seed(0)
    root = tmp_path / "ws"
    save_checkpoint(build_model("small_cnn", 3, (1, 8, 8)), root / "checkpoints" / "base.safetensors", HEADER)
    return Workspace(root)


@pytest.fixture
def good(ws: Workspace, tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "incoming" / "good.safetensors"
    save_checkpoint(build_model("small_cnn", 3, (1, 8, 8)), path, CheckpointHeader(
        "small_cnn", 3, ("0", "1", "2"), (1, 8, 8), {"role": "source", "domain": "2019"}))
    return path


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_refused_and_no_path_is_built_from_it(name, tmp_path):
    with pytest.raises(UnsafeNameError, match="is not a safe name"):
        check_name(name, "--domain")
    with pytest.raises(UnsafeNameError):
        path_inside(tmp_path / "sources", name, "--domain", suffix=".safetensors")
    assert _tree(tmp_path) == {} and not (tmp_path / "sources").exists()


@pytest.mark.parametrize("name", ["2019", "year_1-2", "1930s", "a.b-c_d", "A" * 100])
def test_plain_names_stay_inside_their_folder(name, tmp_path):
    path = path_inside(tmp_path, name, "domain", "stage00-", ".safetensors")
    assert path.parent == tmp_path and path.name == f"stage00-{name}.safetensors"
    assert _tree(tmp_path) == {}, "checking a name creates nothing"


@pytest.mark.parametrize("domain", ["../../escaped", "/tmp/abs", "a/../../b", ".."])
def test_add_source_cli_refuses_an_escaping_domain_and_writes_nothing_anywhere(domain, ws, good, tmp_path, capsys):
    before = _tree(tmp_path)
    code = main(["add-source", str(good), "--domain", domain, "--workdir", str(ws.root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("grasp: error: --domain: ") and err.count("\n") == 1, err
    assert _tree(tmp_path) == before, "a refused add-source wrote a file"
    assert not (tmp_path / "escaped.safetensors").exists() and not Path("/tmp/abs.safetensors").exists()


def _forge(good: Path, out: Path, **extra: str) -> None:
    model, header = load_checkpoint(good)
    save_checkpoint(model, out, CheckpointHeader(header.arch, header.num_classes, header.classes,
                                                 header.input_shape, {**header.extra, **extra}))


def test_a_dropped_file_whose_header_domain_escapes_is_refused_at_scan(ws, good, tmp_path):
    bad = ws.sources / "2021.safetensors"
    _forge(good, bad, domain="../../../x/pwn")
    before = _tree(tmp_path)
    area, refused = scan_area(ws, "2022")
    assert area == [] and [b.path for b in refused] == [bad]
    assert "header 'domain'" in refused[0].reason and "not a safe name" in refused[0].reason
    assert _tree(tmp_path) == before and not (tmp_path / "x").exists()


def test_a_dropped_file_with_an_unsafe_file_name_is_refused_at_scan(ws, good, tmp_path):
    bad = ws.sources / "a b.safetensors"
    _forge(good, bad)
    before = _tree(tmp_path)
    area, refused = scan_area(ws, "2022")
    assert area == [] and "file name" in refused[0].reason
    assert _tree(tmp_path) == before


def _edit_metadata(path: Path, **changes: str) -> None:
    """Rewrite the safetensors JSON header in place, keeping its hashes: an edit made without grasp."""
    blob = path.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    header["__metadata__"].update(changes)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + size:])


@pytest.mark.parametrize("field", ["domain", "base_sha256", "origin", "arch"])
def test_the_integrity_hash_covers_the_metadata(field, good, ws, tmp_path):
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(good.read_bytes())
    _edit_metadata(edited, **{field: "resnet50" if field == "arch" else "forged"})
    with writes_nothing(tmp_path, allow={"ws/.grasp/run.lock.guard"}):
        with pytest.raises(CheckpointMismatchError, match="does not match its header_sha256"):
            read_header(edited)
        code = main(["add-source", str(edited), "--domain", "2019", "--workdir", str(ws.root)])
    assert code == 2 and not ws.source("2019").exists()


def test_forged_base_and_origin_become_claims_not_lineage(ws, good):
    _forge(good, ws.source("2019"), base_sha256="f" * 64, origin="added")
    saved = ws.source("2019")
    with writes_nothing(ws.root):  # a claim is not written into the ledger that vouches for files
        tags = lineage_tags(ws, "2019", file_sha256(saved), read_header(saved))
    assert tags["base_sha256"] == "" and tags["claimed_base_sha256"] == "f" * 64
    assert tags["source_origin"] == "unverified" and tags["claimed_origin"] == "added"


def test_what_grasp_wrote_itself_is_verified_lineage(ws, good):
    saved = add_source(ws, good, "2019")
    _forge(saved.path, ws.source("2020"), base_sha256=file_sha256(ws.base))
    header = read_header(ws.source("2020"))
    record_source(ws, "2020", file_sha256(ws.source("2020")), "trained")
    assert lineage_tags(ws, "2019", saved.sha256, saved.header)["source_origin"] == "added"
    tags = lineage_tags(ws, "2020", file_sha256(ws.source("2020")), header)
    assert tags["source_origin"] == "trained" and tags["base_sha256"] == file_sha256(ws.base)
    assert "claimed_base_sha256" not in tags
    saved.path.write_bytes(ws.source("2020").read_bytes())  # swapped after grasp wrote it: no longer vouched for
    assert lineage_tags(ws, "2019", file_sha256(saved.path), header)["source_origin"] == "unverified"


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _sparse_safetensors(path: Path, tensor_bytes: int) -> None:
    """A header declaring one tensor of `tensor_bytes` bytes, and a sparse file that long (no disk used)."""
    n = tensor_bytes // 4
    header = {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}, "__metadata__": {"arch": "x"}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        fh.truncate(8 + len(text) + n * 4)


def test_a_multi_gigabyte_sparse_file_is_refused_by_its_size_with_small_rss(ws, tmp_path, capsys):
    big = tmp_path / "big.safetensors"
    _sparse_safetensors(big, 6 * 2**30)  # over the default 4 GiB file cap
    before_tree, before_rss = _tree(ws.root), _rss()
    code = main(["add-source", str(big), "--domain", "2019", "--workdir", str(ws.root)])
    grown = _rss() - before_rss
    err = capsys.readouterr().err
    assert code == 2 and "limits.checkpoint_max_bytes" in err and str(big) in err, err
    assert grown < 64 * 2**20, f"RSS grew {grown} bytes while refusing"
    assert _tree(ws.root) == before_tree


def test_declared_tensor_bytes_over_the_cap_are_refused_before_any_tensor_is_read(tmp_path):
    big = tmp_path / "big.safetensors"
    _sparse_safetensors(big, 3 * 2**30)  # under the file cap, over this tensor cap
    before = _rss()
    with writes_nothing(tmp_path), pytest.raises(CheckpointTooLargeError, match="limits.tensor_max_bytes"):
        load_checkpoint(big, limits=LimitsConfig(tensor_max_bytes=2**30))
    assert _rss() - before < 64 * 2**20


def test_a_header_over_its_cap_is_refused(good, tmp_path):
    with writes_nothing(tmp_path), pytest.raises(CheckpointTooLargeError, match="limits.header_max_bytes"):
        read_header(good, LimitsConfig(header_max_bytes=64))


def test_a_header_length_past_the_end_of_the_file_is_refused(tmp_path):
    path = tmp_path / "lies.safetensors"
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with writes_nothing(tmp_path), pytest.raises(CheckpointMismatchError, match="not a readable safetensors file"):
        read_header(path)


def test_params_limits_reach_add_source(ws, good, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("limits:\n  checkpoint_max_bytes: 1000\n")
    with writes_nothing(tmp_path):
        code = main(["add-source", str(good), "--domain", "2019", "--workdir", str(ws.root), "--params",
                     str(params)])
    assert code == 2 and "limits.checkpoint_max_bytes 1000" in capsys.readouterr().err
    assert not ws.source("2019").exists()


def test_a_busy_workspace_exits_75_and_writes_nothing(ws, good, capsys):
    lock = ws.root / LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "started": "2026-01-01T00:00:00+00:00",
                                "command": "grasp run"}))  # another host's lock is never taken over
    before = _tree(ws.root)
    code = main(["add-source", str(good), "--domain", "2019", "--workdir", str(ws.root), "--lock-wait", "0"])
    err = capsys.readouterr().err
    assert code == 75 and "holds this workspace" in err and err.count("\n") == 1, err
    after = _tree(ws.root)
    assert not ws.source("2019").exists()
    assert set(after) - set(before) <= {".grasp/run.lock.guard"}  # the flock's guard file, empty


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import grasp_core.durable as durable

    target = tmp_path / "ckpt.safetensors"

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(build_model("small_cnn", 3, (1, 8, 8)), target, HEADER)
    assert os.listdir(tmp_path) == []


def test_a_truncated_source_ledger_vouches_for_nothing_and_is_rebuilt(ws, good):
    from flows.pipeline.source_ledger import LEDGER

    saved = add_source(ws, good, "2019")
    ledger = ws.root / LEDGER
    ledger.write_text(ledger.read_text()[:5])  # truncated by a crash
    assert lineage_tags(ws, "2019", saved.sha256, saved.header)["source_origin"] == "unverified"
    record_source(ws, "2020", "0" * 64, "trained")  # the next write rebuilds a whole ledger
    assert json.loads(ledger.read_text()) == {"2020": {"sha256": "0" * 64, "origin": "trained"}}


def test_a_truncated_generator_marker_means_the_data_is_regenerated(tmp_path):
    from flows.pipeline.workspace import GENERATOR_MARKER, data_is_current
    from grasp_core.config import Config

    ws = Workspace(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / GENERATOR_MARKER).write_text('{"gener')
    with writes_nothing(tmp_path):  # detected here; rebuilt by the run that regenerates the data
        assert not data_is_current(Config(), ws)


@pytest.mark.parametrize("text", ["transfer:\n  treshold: 0.3\n", "data: [unclosed", "finetune:\n  epochs: -1\n",
                                  "on_bad_source: ignore\n", None])
def test_a_bad_params_yaml_stops_grasp_run_before_any_file_is_written(text, tmp_path, capsys):
    """Bad input is refused before the lock, the Prefect server or the data: no file appears in the workspace
    (before, a bad key was found inside the flow, after the server had written `.cache/prefect`)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    params = ws / "params.yaml"
    if text is not None:
        params.write_text(text)
    before = _tree(tmp_path)
    code = main(["run", "--quiet", "--params", str(params), "--workdir", str(ws)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"grasp: error: {params}: ") and err.count("\n") == 1, err
    assert _tree(tmp_path) == before, "a refused run wrote a file"


@pytest.mark.parametrize("folder", ["a b", "-flag", "~root", "$HOME", "ünïcode", "a..b"])
def test_a_hostile_domain_folder_is_refused_naming_it(folder, tmp_path):
    """A data folder's name becomes part of checkpoint, model and report paths: refused when listed."""
    from grasp_core.data import list_domains

    (tmp_path / "data" / "2020").mkdir(parents=True)
    (tmp_path / "data" / folder).mkdir()
    with writes_nothing(tmp_path), pytest.raises(UnsafeNameError, match="domain folder"):
        list_domains(tmp_path / "data")


def test_an_escaping_name_in_the_domain_order_file_is_refused(tmp_path):
    from grasp_core.data import list_domains
    from grasp_core.data.layout import DOMAIN_ORDER_FILE

    (tmp_path / "data" / "2020").mkdir(parents=True)
    (tmp_path / "data" / DOMAIN_ORDER_FILE).write_text("../../escaped\n2020\n")
    with writes_nothing(tmp_path), pytest.raises(UnsafeNameError, match=f"{DOMAIN_ORDER_FILE}: domain"):
        list_domains(tmp_path / "data")
    assert not (tmp_path / "escaped").exists()
