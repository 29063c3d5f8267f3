"""The sources a registered mean start averages (`transfer.start`), as tags of its version.

The member list (`[{"domain", "sha256", "md5"}]`, about 130 characters a source) sits in the `start_sources`
tag while it fits MLflow's cap on a tag's value; the version's tags are also logged on its run, where the cap
is 8,000 characters (MLflow cuts a longer value by default: broken JSON), so past about 60 sources it does
not. Then the list is a JSON artifact of the version's run, and short tags say where
(`start_sources_artifact`), how many (`start_sources_count`) and the file's sha256 (`start_sources_sha256`).
`resolve_start_sources` puts the list back into the tags (checked against count and digest), so every reader
(`grasp lineage` and `--verify`, `grasp status`, resume and incremental runs, the accuracy matrix) reads both
forms through `start_members`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.stores.tracking import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

START_SOURCES_TAG = "start_sources"  # JSON [{"domain", "sha256", "md5"}] of the sources a mean start holds
ARTIFACT_TAG = "start_sources_artifact"  # where the list is in the version's run when it outgrew a tag
COUNT_TAG = "start_sources_count"
SHA256_TAG = "start_sources_sha256"
ARTIFACT_DIR = "start"  # the run's artifact folder that holds the list
TAG_VALUE_MAX = 8000  # MLflow's cap on a run tag's value (a model version's tag may be longer; its run's not)


def encode_members(members: list[dict[str, str]], file_name: str) -> tuple[str, dict[str, str]]:
    """The member list as JSON text and the tags that carry it: the list itself when it fits a tag, else the
    pointer tags to `<ARTIFACT_DIR>/<file_name>`, which the caller logs to the version's run."""
    text = json.dumps(members, separators=(",", ":"))
    if len(text) <= TAG_VALUE_MAX:
        return text, {START_SOURCES_TAG: text}
    return text, {ARTIFACT_TAG: f"{ARTIFACT_DIR}/{file_name}", COUNT_TAG: str(len(members)),
                  SHA256_TAG: hashlib.sha256(text.encode()).hexdigest()}


def start_members(tags: Mapping[str, Any]) -> list[dict[str, str]]:
    """The sources a registered mean start averages; [] for any other version (or an unresolved pointer)."""
    try:
        found = json.loads(tags.get(START_SOURCES_TAG) or "[]")
    except ValueError:
        return []
    if not isinstance(found, list):
        return []
    return [m for m in found if isinstance(m, dict) and {"domain", "sha256"} <= m.keys()]


def checked_members_text(text: str, tags: Mapping[str, Any], where: str) -> str:
    """`text` (the list read from the artifact) if it matches the pointer tags' digest and count, else an error."""
    if hashlib.sha256(text.encode()).hexdigest() != tags.get(SHA256_TAG):
        raise TrackingError(f"{where}: {tags.get(ARTIFACT_TAG)} does not match the tag {SHA256_TAG}; the mean "
                            "start's source list was altered; re-run from scratch with `grasp run --full`")
    if str(len(start_members({START_SOURCES_TAG: text}))) != tags.get(COUNT_TAG):
        raise TrackingError(f"{where}: {tags.get(ARTIFACT_TAG)} does not list {tags.get(COUNT_TAG)} sources as "
                            f"the tag {COUNT_TAG} says; re-run from scratch with `grasp run --full`")
    return text


def has_members_artifact(tags: Mapping[str, Any]) -> bool:
    """Whether `tags` point to the source list in the run's artifacts instead of holding it."""
    return bool(tags.get(ARTIFACT_TAG)) and not tags.get(START_SOURCES_TAG)


def resolve_start_sources(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """`tags` with `start_sources` read back from the version's run when a pointer stands in for it.

    Versions without a pointer come back unchanged (and nothing is downloaded).
    """
    found = dict(tags)
    if not has_members_artifact(found):
        return found
    from mlflow.exceptions import MlflowException

    where = f"run {run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, str(found[ARTIFACT_TAG]), tmp)
        except (MlflowException, OSError) as err:  # a missing artifact raises one or the other, by store
            raise TrackingError(f"{where}: cannot read {found[ARTIFACT_TAG]}, the mean start's source list "
                                f"({err.__class__.__name__}); check the run's artifacts") from None
        text = Path(path).read_text()
    found[START_SOURCES_TAG] = checked_members_text(text, found, where)
    return found
