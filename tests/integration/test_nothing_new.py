"""`grasp run` with nothing new ends before Prefect (or torch) loads; anything new and the flow runs, with the
real Prefect, MLflow, DVC and GX on a tiny config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline.up_to_date import NO_FLOW_RUN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
# the CLI in a process of its own, then which heavy modules it imported: none of these when nothing is new
HEAVY = ("great_expectations", "mlflow", "prefect", "torch")
PROBE = ("import sys\nfrom flows.cli import main\ncode = main(sys.argv[1:])\n"
         f"print('imported:', *sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(code)")


def _uri(ws: Path) -> str:
    return f"sqlite:///{ws}/mlflow.db"


def _flow(ws: Path):
    from flows.pipeline.run import run_pipeline
    from flows.runtime.options import RunOptions

    return run_pipeline(RunOptions(ws, ws / "params.yaml", tracking_uri=_uri(ws), quiet=True))


def _check(ws: Path) -> str | None:
    """What the CLI asks before it starts Prefect: the line to print, or None (the flow runs)."""
    from flows.pipeline.up_to_date import nothing_new
    from flows.runtime.options import RunOptions
    from grasp_core.config import load_config

    return nothing_new(RunOptions(ws, ws / "params.yaml", tracking_uri=_uri(ws)), load_config(ws / "params.yaml"))


def _cli(ws: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", PROBE, "run", "--quiet", "--workdir", str(ws), "--params",
                           str(ws / "params.yaml"), "--tracking-uri", _uri(ws), *extra],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=900)


def _registry(ws: Path) -> tuple[list[str], list[str]]:
    """(every MLflow run id, every registered version) of the workspace's store."""
    import mlflow

    client = mlflow.MlflowClient(_uri(ws))
    experiment = client.get_experiment_by_name("grasp")
    runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
    return sorted(r.info.run_id for r in runs), sorted(f"{v.name}/{v.version}" for v in client.search_model_versions())


@pytest.fixture(scope="module")
def current(tmp_path_factory, prefect_harness):
    """A workspace after one good run: its champion holds every source."""
    from tests.conftest import TINY_PARAMS

    ws = tmp_path_factory.mktemp("ws")
    (ws / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    summary = _flow(ws)
    assert summary.versions and "champion" in summary.aliases
    return ws, summary


def test_nothing_new_exits_0_without_prefect_torch_or_any_new_run(current):
    from flows.pipeline.up_to_date import RECORD

    ws, summary = current
    before, record = _registry(ws), (ws / RECORD).read_text()
    done = _cli(ws)
    assert done.returncode == 0, done.stderr[-3000:]
    first, imported = done.stdout.splitlines()
    assert first.startswith(f"nothing new: champion v{summary.aliases_version} of {summary.model_name} already "
                            f"holds all {len(summary.sources)} sources") and first.endswith(NO_FLOW_RUN), first
    assert imported == "imported:", "the early exit loaded " + imported  # no Prefect: no server, no flow run
    assert _registry(ws) == before and (ws / RECORD).read_text() == record


def test_after_a_write_to_the_registry_the_check_asks_mlflow_and_still_exits_early(current):
    """A tag on the champion changes the store's file but not the plan: the flow's recorded answer no longer
    stands, so the check asks MLflow itself (loaded now), and still finds nothing new."""
    import mlflow

    ws, summary = current
    mlflow.MlflowClient(_uri(ws)).set_model_version_tag(summary.model_name, summary.aliases_version, "note", "seen")
    done = _cli(ws)
    assert done.returncode == 0, done.stderr[-3000:]
    first, imported = done.stdout.splitlines()
    assert first.startswith("nothing new:") and first.endswith(NO_FLOW_RUN), first
    assert imported == "imported: mlflow", imported


def _new_source(ws: Path) -> None:
    from tests.conftest import add_perturbed_source

    add_perturbed_source(ws, "2020", "2020b")


def _killed_run(ws: Path) -> str:
    """A parent run left RUNNING by a process that died (our PID with another start time: a recycled PID)."""
    import mlflow

    from flows.stores.tracking import OWNER_HOST, OWNER_PID, OWNER_STARTED

    client = mlflow.MlflowClient(_uri(ws))
    experiment = client.get_experiment_by_name("grasp").experiment_id
    tags = {OWNER_PID: str(os.getpid()), OWNER_STARTED: "1.0", OWNER_HOST: socket.gethostname()}
    return client.create_run(experiment, tags=tags, run_name="grasp-killed").info.run_id


def _changed_image(ws: Path, summary) -> None:
    """One pixel of one test image of the target domain changes (a valid image still: the gate passes)."""
    from PIL import Image

    path = sorted((ws / "data" / summary.target / "test").rglob("*.png"))[0]
    with Image.open(path) as image:
        changed = image.copy()
    changed.putpixel((0, 0), 255 - changed.getpixel((0, 0)) if changed.mode == "L" else (0,) * len(changed.mode))
    changed.save(path)


@pytest.mark.parametrize("change", ["data", "new source", "killed run", "params"])
def test_anything_new_means_the_flow_runs_and_records_again(current, change):
    """Each change makes the check step aside; the flow then does what it must and records the run again."""
    import mlflow

    ws, summary = current
    assert _check(ws) is not None  # the previous case's flow left the workspace current
    client, killed = mlflow.MlflowClient(_uri(ws)), ""
    if change == "data":
        _changed_image(ws, summary)
    elif change == "new source":
        _new_source(ws)
    elif change == "killed run":
        killed = _killed_run(ws)
    else:
        raw = yaml.safe_load((ws / "params.yaml").read_text())
        raw["finetune"]["epochs"] = 2  # no source or data depends on it; the flow re-plans with it all the same
        (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    assert _check(ws) is None
    again = _flow(ws)
    if change == "new source":
        assert again.sources == ["2020b"] and len(again.versions) == 1
        line = _check(ws)  # the champion lacks it, but the challenger that awaits promotion holds it
        assert line is not None and f"challenger v{again.aliases_version} " in line, line
        client.set_registered_model_alias(summary.model_name, "champion", again.aliases_version)  # promoted
    else:
        assert again.versions == []
    if killed:
        assert client.get_run(killed).info.status == "KILLED"  # the flow's plan ended it
    assert _check(ws) is not None, f"after the flow ({change}), nothing is new again"


def test_an_incremental_run_is_not_merged_again_while_its_challenger_awaits_promotion(current):
    """A new source becomes challenger v_new; `grasp run` then registers nothing and says the challenger awaits
    `grasp promote`; one more source merges onto the challenger, not onto the champion again."""
    import mlflow

    from flows.ops.status import status
    from flows.pipeline.plan import holds_all_line, lineage_sources
    from flows.pipeline.up_to_date import forget
    from flows.stores.tracking import Tracker
    from tests.conftest import add_perturbed_source

    ws, summary = current
    client = mlflow.MlflowClient(_uri(ws))
    champion = str(client.get_model_version_by_alias(summary.model_name, "champion").version)
    add_perturbed_source(ws, "2020", "2020c")
    first = _flow(ws)
    assert first.sources == ["2020c"] and len(first.versions) == 1 and first.aliases == ["challenger"]
    held = len(first.all_sources)
    before = _registry(ws)
    done = _cli(ws)
    assert done.returncode == 0, done.stderr[-3000:]
    line, imported = done.stdout.splitlines()
    assert line.startswith(holds_all_line(champion, first.aliases_version, held, summary.model_name)), line
    assert f"champion v{champion} " in line and "grasp promote" in line and imported == "imported:"
    forget(ws)  # no record: the flow itself runs and decides, and says the same
    done = _cli(ws)
    assert done.returncode == 0, done.stderr[-3000:]
    said = holds_all_line(champion, first.aliases_version, held, summary.model_name) + "; nothing registered\n"
    assert said in done.stdout and "prefect" in done.stdout.splitlines()[-1].split(), done.stdout
    assert _registry(ws)[1] == before[1]  # the flow's plan agrees: no new version
    assert status(ws, _uri(ws))["sources_waiting"] == []  # `grasp status` agrees too
    add_perturbed_source(ws, "2020", "2020d")
    waiting = status(ws, _uri(ws))["sources_waiting"]
    assert [(s["domain"], s["why"]) for s in waiting] == [("2020d", f"not in the lineage of challenger "
                                                                    f"v{first.aliases_version}")]
    second = _flow(ws)
    assert second.sources == ["2020d"] and len(second.versions) == 1
    chain = lineage_sources(Tracker(ws, tracking_uri=_uri(ws)), summary.model_name, second.versions[0])
    assert chain[0]["parent_version"] == chain[0]["incremental_from"] == first.aliases_version
    assert {champion, first.aliases_version} <= {row["version"] for row in chain}  # champion + both new sources
    assert {"2020c", "2020d"} <= {row["source_domain"] for row in chain}
    client.set_registered_model_alias(summary.model_name, "champion", second.aliases_version)  # promoted


def test_full_always_runs_the_flow(current):
    ws, _ = current
    runs, versions = _registry(ws)
    done = _cli(ws, "--full")
    assert done.returncode == 0, done.stderr[-3000:]
    assert NO_FLOW_RUN not in done.stdout and "prefect" in done.stdout.splitlines()[-1].split()
    now_runs, now_versions = _registry(ws)
    assert len(now_versions) > len(versions) and len(now_runs) > len(runs)  # every source merged again
