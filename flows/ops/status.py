"""The status page of `grasp status`: champion and challenger, the dataset they saw vs data.dvc now, recent
pipeline runs, and source checkpoints not merged yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.ops.lineage import file_digests, fmt_num
from flows.pipeline.start import merged_shas, start_members
from flows.stores.registry import (
    SOURCES_DIR,
    aliases_by_version,
    iso_utc,
    open_registry,
    resolve_model_name,
    resolve_version,
    version_row,
    walk_lineage,
)
from flows.stores.tracking import Tracker


def sources_waiting(ws: Path, chain: list[dict[str, Any]], area: dict[Path, str],
                    whose: str = "the champion") -> list[dict[str, str]]:
    """Source checkpoints of `area` (`area_shas`) that `chain` (the lineage the next run continues: `whose`) did
    not merge: what the next `grasp run` merges (a mean start counts as its order's first source, as in
    flows/pipeline/plan.py)."""
    merged = set().union(*(merged_shas(r) for r in chain)) if chain else set()
    used = {r["source_domain"] for r in chain} | {m["domain"] for r in chain for m in start_members(r)}
    waiting = []
    for path, sha in area.items():
        if sha not in merged:
            why = f"changed since {whose} merged it" if path.stem in used else f"not in the lineage of {whose}"
            waiting.append({"path": path.relative_to(ws).as_posix(), "domain": path.stem, "sha256": sha,
                            "why": why})
    return waiting


def area_shas(ws: Path) -> dict[Path, str]:
    """sha256 of each source checkpoint in the sources area."""
    return {path: file_digests(path)[1] for path in sorted((ws / SOURCES_DIR).glob("*.safetensors"))}


def _next_base(tracker: Tracker, name: str, chain: list[dict[str, Any]],
               area: dict[Path, str]) -> tuple[list[dict[str, Any]], str]:
    """The lineage the next `grasp run` continues and whose it is: the champion's, or that of a newer challenger
    awaiting promotion (`plan.pending_challenger`; any params: status does not read params.yaml)."""
    from flows.pipeline.plan import pending_challenger

    pending = pending_challenger(tracker, name, chain[0]["version"], set(area.values()), "") if chain else None
    if pending is None:
        return chain, "the champion"
    return walk_lineage(tracker.client, name, resolve_version(tracker.client, name, pending)), f"challenger v{pending}"


def _recent_runs(tracker: Tracker, target: str, limit: int) -> list[dict[str, Any]]:
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId IS NULL AND tags.method = 'grasp' AND "
        f"tags.target_domain = '{target}'", order_by=["attributes.start_time DESC"], max_results=limit)
    return [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
             "start": iso_utc(r.info.start_time),
             "duration_s": round((r.info.end_time - r.info.start_time) / 1000, 1) if r.info.end_time else None,
             "flow_run_id": r.data.tags.get("flow_run_id", "")} for r in runs]


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "aliases", "stage", "source_domain", "test_accuracy", "val_accuracy", "dataset_dvc_md5",
            "created")
    return {key: row[key] for key in keys}


def status(ws: Path, tracking_uri: str | None, model_name: str | None = None, runs: int = 5) -> dict[str, Any]:
    """Champion and challenger, the dataset they saw vs data.dvc now, recent pipeline runs, sources waiting."""
    from flows.stores.versioning import read_dvc_hash

    ws = ws.resolve()
    tracker = open_registry(ws, tracking_uri)
    client = tracker.client
    name = resolve_model_name(client, model_name, tracker.tracking_uri)
    aliases = aliases_by_version(client, name)
    version_of = {alias: v for v, names in aliases.items() for alias in names}
    chain = walk_lineage(client, name, resolve_version(client, name, "@champion")) if "champion" in version_of else []
    out: dict[str, Any] = {"model_name": name, "tracking_uri": tracker.tracking_uri, "champion": None,
                           "challenger": None}
    if chain:
        out["champion"] = _brief(chain[0])
    if "challenger" in version_of:
        out["challenger"] = _brief(version_row(client, client.get_model_version(name, version_of["challenger"]),
                                               aliases))
    out["dataset_dvc_md5_now"] = read_dvc_hash(ws / "data.dvc") if (ws / "data.dvc").is_file() else ""
    target = chain[0]["target_domain"] if chain else name.removeprefix("grasp-")
    out["runs"] = _recent_runs(tracker, target, runs)
    area = area_shas(ws)
    base, whose = _next_base(tracker, name, chain, area)
    out["sources_waiting"] = sources_waiting(ws, base, area, whose)
    return out


def format_status(report: dict[str, Any]) -> str:
    """The status report for a terminal."""
    lines = [f"model {report['model_name']}  ({report['tracking_uri']})"]
    for alias in ("champion", "challenger"):
        v = report[alias]
        lines.append(f"  {alias:<10}  " + ("none" if v is None else
                     f"v{v['version']}  test {fmt_num(v['test_accuracy'], '.4f')}  "
                     f"val {fmt_num(v['val_accuracy'], '.4f')}  "
                     f"stage {v['stage']} (source {v['source_domain']})  created {v['created']}"))
    now, champion = report["dataset_dvc_md5_now"], report["champion"]
    same = champion is not None and champion["dataset_dvc_md5"] == now
    lines.append(f"  dataset     data.dvc {now[:12] or 'missing'}"
                 + ("" if champion is None else "  (the champion's)" if same else
                    f"  (champion trained on {champion['dataset_dvc_md5'][:12]})"))
    lines.append(f"recent pipeline runs ({len(report['runs'])}, newest first):")
    lines += [f"  {r['start']}  {r['status']:<9} {fmt_num(r['duration_s'], '.1f'):>6}s  {r['run_name']}  "
              f"flow run {r['flow_run_id']}" for r in report["runs"]] or ["  none"]
    waiting = report["sources_waiting"]
    lines.append(f"sources waiting ({len(waiting)}):")
    lines += [f"  {s['path']}  sha256 {s['sha256'][:12]}  {s['why']}" for s in waiting] or ["  none"]
    return "\n".join(lines)
