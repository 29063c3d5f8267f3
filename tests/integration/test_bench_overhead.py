"""`grasp bench overhead` on a tiny config: every phase is timed, and the flow's cost is reported in seconds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_overhead_reports_each_phase_in_seconds(tmp_path, tmp_params):
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, "-m", "flows.cli", "bench", "overhead", "--params", str(tmp_params()),
                           "--json", str(out)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["phase"]: row for row in json.loads(out.read_text())}
    assert list(rows) == ["cold", "nothing_new", "warm"]
    for phase in ("cold", "warm"):
        row = rows[phase]
        assert row["overhead_s"] == pytest.approx(row["flow_s"] - row["core_s"], abs=0.11)
    assert rows["nothing_new"]["flow_s"] > 0 and "core_s" not in rows["nothing_new"]
    assert rows["nothing_new"]["no_flow_run"] == "1/1"  # it timed the exit before Prefect, not a flow run
    assert "overhead_s" in done.stdout.splitlines()[0]
