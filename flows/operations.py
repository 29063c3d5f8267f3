"""Day-2 operations on the model registry: lineage back to data and checkpoint hashes, a re-hash audit of
that lineage, and a status page (champion, challenger, recent runs, sources not merged yet).

Plain functions returning data (lists of dicts, JSON-ready) plus `format_*` renderers; the CLI wires them.
Promotion through the gate lives in flows/promotion.py, the lineage plot in flows/lineage_plot.py.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.tracking import Tracker, TrackingError, resolve_tracking_uri
from grasp_core.names import check_name, path_inside

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

SOURCES_DIR = Path("checkpoints") / "sources"
_TAGS = ("target_domain", "source_domain", "parent_version", "checkpoint_sha256", "chain_sha256", "source_sha256",
         "source_dvc_md5", "base_sha256", "dataset_dvc_md5", "sources_dvc_md5", "params_sha256", "code_commit",
         "flow_run_id", "policy", "skipped_sources", "resumed_from", "rejected")
_METRICS = {"val_accuracy": "val/accuracy", "test_accuracy": "test/accuracy", "transfer_tensors": "transfer/tensors",
            "transfer_tensors_frac": "transfer/tensors_frac", "transfer_params_frac": "transfer/params_frac",
            "peak_rss_bytes": "memory/peak_rss_bytes", "models_alive": "memory/models_alive",
            "param_bytes_alive": "memory/param_bytes_alive", "param_sized_multiple": "memory/param_sized_multiple",
            "step_s": "time/step_s"}
_COUNTS = ("transfer_tensors", "peak_rss_bytes", "models_alive", "param_bytes_alive")  # logged as floats
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# ---------------------------------------------------------------------------------------------- registry access

def open_registry(ws: Path, tracking_uri: str | None) -> Tracker:
    """A Tracker on the workspace's store; refuses a SQLite file that does not exist instead of creating one."""
    uri = resolve_tracking_uri(ws, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"{uri}: no MLflow database there; run `grasp run` first or pass --tracking-uri")
    return Tracker(ws, tracking_uri=uri)


def resolve_model_name(client: MlflowClient, model_name: str | None, where: str) -> str:
    """`model_name` if registered, else the only registered `grasp-*` model; errors list what exists."""
    names = sorted(m.name for m in client.search_registered_models(filter_string="name LIKE 'grasp-%'"))
    if model_name is not None:
        check_name(model_name, "--model")
        if model_name not in names and not _exists(client, model_name):
            raise TrackingError(f"{where}: no registered model '{model_name}'; registered: "
                                f"{', '.join(names) or 'none'}")
        return model_name
    if not names:
        raise TrackingError(f"{where}: no registered grasp-* model; run `grasp run` first")
    if len(names) > 1:
        raise TrackingError(f"{where}: several registered models ({', '.join(names)}); pick one with --model NAME")
    return names[0]


def _exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in _MISSING:
            raise
        return False
    return True


def aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version -> sorted aliases (search results leave `aliases` empty on SQL stores, so read the model)."""
    out: dict[str, list[str]] = {}
    for alias, version in sorted(client.get_registered_model(name).aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return out


def resolve_version(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """A version number (`7`, `v7`) or an alias (`@champion`) of model `name`."""
    from mlflow.exceptions import MlflowException

    number = ref.strip().removeprefix("v")
    if not ref.startswith("@") and not number.isdigit():
        raise TrackingError(f"'{ref}': not a version reference; use a number (7) or an alias (@champion)")
    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, number)
    except MlflowException as err:
        if err.error_code not in _MISSING:
            raise
    known = ", ".join(f"@{a} -> v{v}" for v, aliases in aliases_by_version(client, name).items() for a in aliases)
    raise TrackingError(f"{name}: no version or alias '{ref}'; aliases: {known or 'none'}; "
                        "see versions with `grasp lineage`")


def iso_utc(ms: int | None) -> str:
    """Milliseconds since the epoch (MLflow timestamps) as ISO 8601 UTC, seconds precision."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_history(raw: str | None) -> list[dict[str, Any]]:
    """The `promotion_history` tag as a list; an unparsable value is kept visible, never dropped."""
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except ValueError:
        return [{"unparsed": raw}]
    return history if isinstance(history, list) else [{"unparsed": raw}]


# ---------------------------------------------------------------------------------------------- lineage

def version_row(client: MlflowClient, mv: ModelVersion, aliases: dict[str, list[str]]) -> dict[str, Any]:
    """One registered version as a flat JSON-ready dict: tags, its run's metrics, aliases, promotions."""
    tags = dict(mv.tags)
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    stage = tags.get("stage", "")
    row: dict[str, Any] = {"model_name": mv.name, "version": str(mv.version),
                           "aliases": aliases.get(str(mv.version), []),
                           "stage": int(stage) if stage.isdigit() else None, "run_id": mv.run_id or "",
                           "created": iso_utc(mv.creation_timestamp)}
    row.update({key: tags.get(key, "") for key in _TAGS})
    row.update({key: metrics.get(metric) for key, metric in _METRICS.items()})
    row.update({key: int(row[key]) for key in _COUNTS if row[key] is not None})
    row["promotion_history"] = parse_history(tags.get("promotion_history"))
    return row


def walk_lineage(client: MlflowClient, name: str, mv: ModelVersion) -> list[dict[str, Any]]:
    """Rows from `mv` back along `parent_version` tags to the first stage, newest first."""
    aliases, rows, seen = aliases_by_version(client, name), [], set()
    while True:
        if str(mv.version) in seen:
            raise TrackingError(f"{name}: parent_version tags loop at v{mv.version}; fix the tag on that version")
        seen.add(str(mv.version))
        rows.append(version_row(client, mv, aliases))
        parent = mv.tags.get("parent_version", "")
        if not parent:
            return rows
        try:
            mv = resolve_version(client, name, parent)
        except TrackingError:
            raise TrackingError(f"{name}: v{mv.version} names parent_version {parent}, which is not in the "
                                "registry (deleted?); the lineage is broken there") from None


def lineage(ws: Path, tracking_uri: str | None, ref: str = "@champion",
            model_name: str | None = None) -> list[dict[str, Any]]:
    """The chain of registered versions that produced `ref`, newest first (see `version_row` for the keys).

    Args:
        ref: a version number (`7`) or an alias (`@champion`).
        model_name: default: the only registered `grasp-*` model.
    """
    tracker = open_registry(ws, tracking_uri)
    name = resolve_model_name(tracker.client, model_name, tracker.tracking_uri)
    return walk_lineage(tracker.client, name, resolve_version(tracker.client, name, ref))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table_row(r: dict[str, Any]) -> dict[str, str]:
    moved = "adopted" if r["stage"] == 0 else "rejected (rollback)" if r.get("rejected") == "true" else (
        f"{_num(r['transfer_tensors'], '.0f')} ({_num(r['transfer_tensors_frac'], '.0%')})")
    rss = None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 2**20
    return {"version": f"v{r['version']}", "aliases": ",".join(r["aliases"]) or "-", "stage": str(r["stage"]),
            "source": r["source_domain"], "transferred": moved, "val_acc": _num(r["val_accuracy"], ".4f"),
            "test_acc": _num(r["test_accuracy"], ".4f"), "peak_rss_mb": _num(rss, ".1f"),
            "models_alive": _num(r["models_alive"], ".0f"), "created": r["created"]}


def format_lineage(rows: list[dict[str, Any]]) -> str:
    """A table (newest first), the key hashes of every version (first 12 hex) and its promotion decisions."""
    from flows.report import format_rows

    if not rows:
        return "(no versions)"
    head = rows[0]
    lines = [f"{head['model_name']}: lineage of v{head['version']} (target {head['target_domain']}), "
             f"{len(rows)} versions, newest first", format_rows([_table_row(r) for r in rows]), "", "hashes:"]
    for r in rows:
        lines.append(f"  v{r['version']}  checkpoint {r['checkpoint_sha256'][:12]}  source {r['source_domain']} "
                     f"sha256 {r['source_sha256'][:12]} dvc-md5 {r['source_dvc_md5'][:12]}  "
                     f"dataset {r['dataset_dvc_md5'][:12]}  params {r['params_sha256'][:12]}")
        lines.append(f"        code {r['code_commit'][:12]}{'-dirty' * r['code_commit'].endswith('-dirty')}  "
                     f"flow run {r['flow_run_id']}  mlflow run {r['run_id']}")
    skips = {(r["version"], s["file"], s["reason"]) for r in rows for s in _skips(r)}
    if skips:
        lines += ["", "refused source files left out (on_bad_source: skip):"]
        lines += [f"  v{v}  {file}: {reason}" for v, file, reason in sorted(skips, key=lambda x: int(x[0]))]
    for r in rows:
        if r.get("resumed_from"):
            lines.append(f"  v{r['version']}: its run resumed an interrupted run at v{r['resumed_from']}")
    decisions = [(r["version"], e) for r in rows for e in r["promotion_history"]]
    if decisions:
        lines += ["", "promotion decisions:"]
        lines += [f"  v{v}  {e.get('when', '?')}  {e.get('who', '?')}: {e.get('reason', e)}" for v, e in decisions]
    return "\n".join(lines)


def _skips(row: dict[str, Any]) -> list[dict[str, str]]:
    try:
        found = json.loads(row.get("skipped_sources") or "[]")
    except ValueError:
        return []
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


# ---------------------------------------------------------------------------------------------- audit

def _digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file in one read: DVC's md5 and grasp's checkpoint sha256."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _finding(row: dict[str, Any], what: str, path: str, expected: str, actual: str) -> dict[str, str]:
    return {"version": row["version"], "what": what, "path": path, "expected": expected, "actual": actual}


def _source_findings(ws: Path, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    findings = []
    for r in rows:
        rel = path_inside(SOURCES_DIR, r["source_domain"], f"v{r['version']}: tag source_domain",
                          suffix=".safetensors").as_posix()
        if not (ws / rel).is_file():
            findings.append(_finding(r, "source_checkpoint", rel, r["source_sha256"], "missing"))
            continue
        md5, sha = _digests(ws / rel)
        if md5 != r["source_dvc_md5"]:
            findings.append(_finding(r, "source_dvc_md5", rel, r["source_dvc_md5"], md5))
        if sha != r["source_sha256"]:
            findings.append(_finding(r, "source_sha256", rel, r["source_sha256"], sha))
    return findings


def _dataset_findings(ws: Path, rows: list[dict[str, Any]], data_dvc: str) -> list[dict[str, str]]:
    from flows.versioning import file_md5_in_dir, read_dvc_hash, verify

    dvcfile = ws / data_dvc
    if not dvcfile.is_file():
        return [_finding(r, "dataset_dvc_md5", data_dvc, r["dataset_dvc_md5"], "missing") for r in rows]
    current = read_dvc_hash(dvcfile)
    findings = [_finding(r, "dataset_dvc_md5", data_dvc, r["dataset_dvc_md5"], current)
                for r in rows if r["dataset_dvc_md5"] != current]
    claims = [r for r in rows if r["dataset_dvc_md5"] == current]  # versions trained on what data.dvc records
    for rel in verify(ws, dvcfile) if claims else []:
        expected = file_md5_in_dir(ws, dvcfile, rel) or "absent"
        actual = _digests(ws / rel)[0] if (ws / rel).is_file() else "missing"
        findings += [_finding(r, "dataset_file", rel, expected, actual) for r in claims]
    return findings


def verify_lineage(ws: Path, rows: list[dict[str, Any]], data_dvc: str = "data.dvc") -> list[dict[str, str]]:
    """Re-hash what DVC tracks now and compare it with the hashes each version recorded.

    Flags, per version: a source checkpoint whose md5 (`source_dvc_md5`) or sha256 (`source_sha256`) differs or
    that is gone; a `data.dvc` that records another dataset than `dataset_dvc_md5`; and, for versions trained on
    the dataset data.dvc records, every data file changed, missing or added since `dvc add`.

    Returns:
        Findings `{version, what, path, expected, actual}`; `[]` when everything matches.
    """
    ws = ws.resolve()
    return _source_findings(ws, rows) + _dataset_findings(ws, rows, data_dvc)


def format_findings(findings: list[dict[str, str]], rows: list[dict[str, Any]]) -> str:
    """One line per finding, or one line saying the lineage verified clean."""
    if not findings:
        return f"verified: {len(rows)} versions; source checkpoints and dataset match their recorded hashes"
    lines = [f"NOT verified: {len(findings)} findings"]
    lines += [f"  v{f['version']}  {f['what']}  {f['path']}: expected {f['expected']}, now {f['actual']}"
              for f in findings]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- status

def sources_waiting(ws: Path, chain: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Source checkpoints on disk whose sha256 is nowhere in `chain` (e.g. the champion's lineage)."""
    merged = {r["source_sha256"] for r in chain}
    used = {r["source_domain"] for r in chain}
    waiting = []
    for path in sorted((ws / SOURCES_DIR).glob("*.safetensors")):
        sha = _digests(path)[1]
        if sha not in merged:
            why = "changed since the champion merged it" if path.stem in used else "not in the champion's lineage"
            waiting.append({"path": path.relative_to(ws).as_posix(), "domain": path.stem, "sha256": sha,
                            "why": why})
    return waiting


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
    from flows.versioning import read_dvc_hash

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
    out["sources_waiting"] = sources_waiting(ws, chain)
    return out


def format_status(report: dict[str, Any]) -> str:
    """The status report for a terminal."""
    lines = [f"model {report['model_name']}  ({report['tracking_uri']})"]
    for alias in ("champion", "challenger"):
        v = report[alias]
        lines.append(f"  {alias:<10}  " + ("none" if v is None else
                     f"v{v['version']}  test {_num(v['test_accuracy'], '.4f')}  val {_num(v['val_accuracy'], '.4f')}  "
                     f"stage {v['stage']} (source {v['source_domain']})  created {v['created']}"))
    now, champion = report["dataset_dvc_md5_now"], report["champion"]
    same = champion is not None and champion["dataset_dvc_md5"] == now
    lines.append(f"  dataset     data.dvc {now[:12] or 'missing'}"
                 + ("" if champion is None else "  (the champion's)" if same else
                    f"  (champion trained on {champion['dataset_dvc_md5'][:12]})"))
    lines.append(f"recent pipeline runs ({len(report['runs'])}, newest first):")
    lines += [f"  {r['start']}  {r['status']:<9} {_num(r['duration_s'], '.1f'):>6}s  {r['run_name']}  "
              f"flow run {r['flow_run_id']}" for r in report["runs"]] or ["  none"]
    waiting = report["sources_waiting"]
    lines.append(f"sources waiting ({len(waiting)}):")
    lines += [f"  {s['path']}  sha256 {s['sha256'][:12]}  {s['why']}" for s in waiting] or ["  none"]
    return "\n".join(lines)
