"""`grasp run --all-targets --runner dask`: every domain is the target, each with its own registered model;
the sources and the targets' merge chains fan out on a local Dask cluster, one source model per domain
serves every target (trained once), and registration stays in the flow's process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _held(tags: dict[str, str]) -> dict[str, str]:
    """The sources (domain -> sha256) a version merged: its own, or every source of a mean start."""
    from flows.pipeline.start import start_members

    members = start_members(tags)
    return {m["domain"]: m["sha256"] for m in members} if members else {tags["source_domain"]: tags["source_sha256"]}


def test_every_domain_as_target_registers_its_own_model_and_reuses_sources(tmp_path):
    from flows.stores.tracking import Tracker
    from tests.conftest import TINY_PARAMS

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--all-targets", "--runner", "dask",
                           "--json", "rows.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    domains = ["2020", "2021", "2022"]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["target"], r["method"]) for r in rows] == [(d, "grasp") for d in domains]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert "GRASP mean test accuracy over 3 targets" in done.stdout
    tracker = Tracker(tmp_path)
    for target in domains:
        versions = tracker.versions(f"grasp-{target}")
        assert [v["tags"]["stage"] for v in versions] == ["0", "1"]  # 2 sources -> 2 stages
        assert versions[1]["tags"]["parent_version"] == versions[0]["version"]
        assert set().union(*(_held(v["tags"]) for v in versions)) == set(domains) - {target}
        assert tracker.get_alias_version(f"grasp-{target}", "champion") == versions[-1]["version"]
    # one source model per domain, the same file for every target that merges it
    by_domain: dict[str, set[str]] = {}
    for target in domains:
        for v in tracker.versions(f"grasp-{target}"):
            for domain, sha in _held(v["tags"]).items():
                by_domain.setdefault(domain, set()).add(sha)
    assert all(len(shas) == 1 for shas in by_domain.values()), by_domain
