"""A lineage for people: the table of `grasp lineage` and the re-hash audit of `grasp lineage --verify`
(source checkpoints and the dataset against the hashes their versions recorded)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flows.pipeline.start import start_members
from flows.stores.registry import SOURCES_DIR
from grasp_core.names import path_inside


def fmt_num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table_row(r: dict[str, Any]) -> dict[str, str]:
    moved = "adopted" if r["stage"] == 0 else "rejected (rollback)" if r.get("rejected") == "true" else (
        f"{fmt_num(r['transfer_tensors'], '.0f')} ({fmt_num(r['transfer_tensors_frac'], '.0%')})")
    rss = None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 2**20
    return {"version": f"v{r['version']}", "aliases": ",".join(r["aliases"]) or "-", "stage": str(r["stage"]),
            "source": r["source_domain"], "transferred": moved, "val_acc": fmt_num(r["val_accuracy"], ".4f"),
            "test_acc": fmt_num(r["test_accuracy"], ".4f"), "peak_rss_mb": fmt_num(rss, ".1f"),
            "models_alive": fmt_num(r["models_alive"], ".0f"), "created": r["created"]}


def format_lineage(rows: list[dict[str, Any]]) -> str:
    """A table (newest first), the key hashes of every version (first 12 hex) and its promotion decisions."""
    from flows.reports.tables import format_rows

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
    lines += _start_lines(rows)
    for r in rows:
        if r.get("resumed_from"):
            lines.append(f"  v{r['version']}: its run resumed an interrupted run at v{r['resumed_from']}")
    decisions = [(r["version"], e) for r in rows for e in r["promotion_history"]]
    if decisions:
        lines += ["", "promotion decisions:"]
        lines += [f"  v{v}  {e.get('when', '?')}  {e.get('who', '?')}: {e.get('reason', e)}" for v, e in decisions]
    return "\n".join(lines)


def _start_lines(rows: list[dict[str, Any]]) -> list[str]:
    """How stage 0 was chosen (`transfer.start`) and, for a mean start, every source it averages."""
    lines = []
    for r in rows:
        if not r.get("start_chosen"):
            continue
        members = start_members(r)
        what = f"mean of {len(members)} sources" if members else "the order's first source"
        lines += ["", f"start of v{r['version']}: {what} (zero-shot val: first {r.get('start_val_first', '-')}, "
                      f"mean {r.get('start_val_mean', '-')})"]
        lines += [f"  {m['domain']}  sha256 {m['sha256'][:12]}" for m in members]
    return lines


def _skips(row: dict[str, Any]) -> list[dict[str, str]]:
    try:
        found = json.loads(row.get("skipped_sources") or "[]")
    except ValueError:
        return []
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


# ---------------------------------------------------------------------------------------------- audit

def file_digests(path: Path) -> tuple[str, str]:
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
    """Each version's source file against its recorded hashes; a mean start's: every source it averages."""
    findings = []
    for r in rows:
        members = start_members(r)
        if members:  # a mean start: each source it averages, as if it were the stage's source
            for m in members:
                findings += _file_findings(ws, r, m["domain"], m["sha256"], m.get("md5"))
        else:
            findings += _file_findings(ws, r, r["source_domain"], r["source_sha256"], r["source_dvc_md5"])
    return findings


def _file_findings(ws: Path, r: dict[str, Any], domain: str, sha256: str, dvc_md5: str | None) -> list[dict[str, str]]:
    rel = path_inside(SOURCES_DIR, domain, f"v{r['version']}: source domain", suffix=".safetensors").as_posix()
    if not (ws / rel).is_file():
        return [_finding(r, "source_checkpoint", rel, sha256, "missing")]
    md5, sha = file_digests(ws / rel)
    findings = []
    if dvc_md5 is not None and md5 != dvc_md5:
        findings.append(_finding(r, "source_dvc_md5", rel, dvc_md5, md5))
    if sha != sha256:
        findings.append(_finding(r, "source_sha256", rel, sha256, sha))
    return findings


def _dataset_findings(ws: Path, rows: list[dict[str, Any]], data_dvc: str) -> list[dict[str, str]]:
    from flows.stores.dvc_audit import file_md5_in_dir, verify
    from flows.stores.versioning import read_dvc_hash

    dvcfile = ws / data_dvc
    if not dvcfile.is_file():
        return [_finding(r, "dataset_dvc_md5", data_dvc, r["dataset_dvc_md5"], "missing") for r in rows]
    current = read_dvc_hash(dvcfile)
    findings = [_finding(r, "dataset_dvc_md5", data_dvc, r["dataset_dvc_md5"], current)
                for r in rows if r["dataset_dvc_md5"] != current]
    claims = [r for r in rows if r["dataset_dvc_md5"] == current]  # versions trained on what data.dvc records
    for rel in verify(ws, dvcfile) if claims else []:
        expected = file_md5_in_dir(ws, dvcfile, rel) or "absent"
        actual = file_digests(ws / rel)[0] if (ws / rel).is_file() else "missing"
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
