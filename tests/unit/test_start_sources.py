"""A mean start's source list in its version's tags: inline while it fits MLflow's cap on a tag's value, else a
JSON artifact of the version's run behind short pointer tags (flows/stores/start_sources.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows.pipeline.plan import chain_shas
from flows.pipeline.start import members_file, start_artifacts
from flows.stores import start_sources as ss
from grasp_core.errors import GraspError


def _members(n: int) -> list[dict[str, str]]:
    """`n` sources as a mean start records them: domain, checkpoint sha256, DVC md5 (~130 characters each)."""
    return [{"domain": f"site_{i:03d}", "sha256": hashlib.sha256(f"s{i}".encode()).hexdigest(),
             "md5": hashlib.md5(f"m{i}".encode()).hexdigest()} for i in range(n)]


class ArtifactFolder:
    """Stands in for MlflowClient.download_artifacts over one run's artifact folder (the real store is exercised
    in tests/integration/test_start_sources_artifact.py); counts the downloads."""

    def __init__(self, root: Path) -> None:
        self.root, self.downloads = root, 0

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        self.downloads += 1
        target = Path(dst_path) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.root / run_id / path).read_bytes())
        return str(target)


def test_a_few_sources_stay_in_the_tag():
    text, tags = ss.encode_members(_members(3), "x.sources.json")
    assert tags == {ss.START_SOURCES_TAG: text} and ss.start_members(tags) == _members(3)
    assert not ss.has_members_artifact(tags)
    assert start_artifacts(tags, Path("start-mean-x.safetensors")) == {}  # nothing to log beside the tags


def test_eighty_sources_go_to_an_artifact_behind_short_tags(tmp_path):
    members = _members(80)
    text, tags = ss.encode_members(members, "start-mean-abc.sources.json")
    assert len(text) > ss.TAG_VALUE_MAX  # the list itself would not fit a run tag
    assert ss.has_members_artifact(tags) and ss.start_members(tags) == []  # unresolved: no list yet
    assert ss.START_SOURCES_TAG not in tags and all(len(v) <= ss.TAG_VALUE_MAX for v in tags.values())
    assert tags == {ss.ARTIFACT_TAG: "start/start-mean-abc.sources.json", ss.COUNT_TAG: "80",
                    ss.SHA256_TAG: hashlib.sha256(text.encode()).hexdigest()}
    mean = tmp_path / "start-mean-abc.safetensors"
    assert start_artifacts(tags, mean) == {"start": members_file(mean)}
    assert members_file(mean).name == "start-mean-abc.sources.json"  # the name the pointer tag gives

    store = ArtifactFolder(tmp_path / "store")
    (tmp_path / "store" / "run1" / "start").mkdir(parents=True)
    (tmp_path / "store" / "run1" / tags[ss.ARTIFACT_TAG]).write_text(text)
    resolved = ss.resolve_start_sources(store, "run1", {**tags, "source_domain": "mean"})  # type: ignore[arg-type]
    assert ss.start_members(resolved) == members and resolved["source_domain"] == "mean"
    # what resume and incremental runs read: the mean stands for the first member and holds all 80
    assert chain_shas([resolved]) == {members[0]["sha256"]}
    assert chain_shas([resolved], held=True) == {m["sha256"] for m in members}
    plain = {"source_domain": "b", "source_sha256": "sha-b"}
    assert ss.resolve_start_sources(store, "run2", plain) == plain and store.downloads == 1  # nothing read


def test_an_altered_or_missing_list_is_refused(tmp_path):
    members = _members(80)
    text, tags = ss.encode_members(members, "l.sources.json")
    with pytest.raises(GraspError, match="run r: start/l.sources.json does not match the tag start_sources_sha256"):
        ss.checked_members_text(text.replace("site_001", "site_999"), tags, "run r")
    shorter = json.dumps(members[:79], separators=(",", ":"))
    with pytest.raises(GraspError, match="does not list 80 sources"):
        ss.checked_members_text(shorter, {**tags, ss.SHA256_TAG: hashlib.sha256(shorter.encode()).hexdigest()},
                                "run r")
    assert ss.checked_members_text(text, tags, "run r") == text
    with pytest.raises(GraspError, match="run r: cannot read start/l.sources.json"):
        ss.resolve_start_sources(ArtifactFolder(tmp_path), "r", tags)  # type: ignore[arg-type]
