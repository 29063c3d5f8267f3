"""What grasp itself wrote into the sources area, kept outside it: `.grasp/sources.json`.

The sources area is a drop folder: anyone who can write there can write any header, and a header's
`origin` or `base_sha256` is only a claim. The ledger records, for every checkpoint grasp wrote there
(trained by `grasp run`, or copied in by `grasp add-source`), its file sha256 and origin. Lineage tags
carry an origin only when the ledger vouches for that very file, and a base hash only when it is the
workspace's base; anything else is recorded as `claimed_*`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from flows.runtime.lock import exclusive
from grasp_core.checkpoints import CheckpointHeader, file_sha256
from grasp_core.durable import write_text_durably

if TYPE_CHECKING:
    from flows.pipeline.workspace import Workspace

LEDGER = Path(".grasp") / "sources.json"


def _read(path: Path) -> dict[str, dict[str, str]]:
    """The ledger, or {} when it is missing or unreadable (a truncated ledger vouches for nothing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_source(ws: Workspace, domain: str, sha256: str, origin: str) -> None:
    """Vouch for the file grasp just wrote as `<domain>.safetensors` (read-modify-write under a flock, since
    sources train in parallel threads and Dask worker processes)."""
    path = ws.root / LEDGER
    with exclusive(path.with_name(path.name + ".guard")):
        entries = _read(path)
        entries[domain] = {"sha256": sha256, "origin": origin}
        write_text_durably(path, json.dumps(entries, sort_keys=True, indent=1))


def verified_origin(ws: Workspace, domain: str, sha256: str) -> str:
    """The origin the ledger records for this exact file, or "" when grasp did not write it."""
    entry = _read(ws.root / LEDGER).get(domain) or {}
    return str(entry.get("origin", "")) if entry.get("sha256") == sha256 else ""


def lineage_tags(ws: Workspace, domain: str, sha256: str, header: CheckpointHeader) -> dict[str, str]:
    """Registry tags about a source's provenance: verified facts, and the header's claims kept apart."""
    base = file_sha256(ws.base) if ws.base.is_file() else ""
    claimed_base, claimed_origin = header.extra.get("base_sha256", ""), header.extra.get("origin", "")
    tags = {"base_sha256": claimed_base if claimed_base and claimed_base == base else "",
            "source_origin": verified_origin(ws, domain, sha256) or "unverified"}
    if claimed_base and not tags["base_sha256"]:
        tags["claimed_base_sha256"] = claimed_base
    if claimed_origin:
        tags["claimed_origin"] = claimed_origin
    return tags
