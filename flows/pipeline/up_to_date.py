"""`grasp run` with nothing new ends before Prefect starts and before torch loads.

The flow records what a run worked on in `.grasp/last-run.json` when a single-target run ends well, and drops
the record when any run starts (so a killed or failed run leaves none). `nothing_new` is the CLI's check before
it boots Prefect: the record must match this run's inputs, and each tool's own record must say it has nothing
to do, through the very functions the flow calls:

- our inputs: the params' hash, the code, the tracking store, and the stat fingerprints (path, size, mtime,
  inode: what DVC's state cache trusts) of the data, the sources area and the base, taken by the flow before it
  read them;
- DVC: `versioning.is_current` (data and sources added and pushed, unchanged since, to the same remote);
- GX: `validation.passed_before` (the gate passed on exactly this data, suite and knobs);
- MLflow: `plan.nothing_to_merge`, which reads `plan.decide` as the flow's plan does (no dead run to end,
  nothing to resume, the lineage of the champion, or of a newer challenger that awaits promotion, holds every
  source of the area). The flow asks it once more as
  it ends and records the answer with the SQLite store's stat fingerprint; while that file is unchanged the
  answer stands and MLflow (seconds to import) is not loaded at all.

Any mismatch or doubt (no record, a store that does not open) means the flow runs and decides. Scheduled runs
(`grasp serve`) call the flow directly and never take this exit: every tick stays a Prefect flow run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.stores.fingerprints import fingerprint
from grasp_core.durable import write_text_durably

if TYPE_CHECKING:
    from flows.runtime.options import RunOptions
    from flows.stores.tracking import Tracker
    from grasp_core.config import Config

RECORD = Path(".grasp") / "last-run.json"
VALIDATION_DIR = Path("reports") / "validation"  # the GX results, under the workspace
SOURCES_DIR = Path("checkpoints") / "sources"
BASE_FILE = Path("checkpoints") / "base.safetensors"
_FORMAT = 2  # 2: the decision names the champion and the version holding every source
CODE_PACKAGES = ("grasp_core", "flows")  # the code behind a result; docs, tests and results are not
NO_FLOW_RUN = "(data, sources, params and registry as the last run left them: no flow run)"  # ends the line
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """What a run worked on. The fingerprints are taken before the run read each input, so a file changed
    during the run shows as changed afterwards."""

    params_sha256: str
    code: str  # grasp's version and code digest (`code_identity`)
    tracking_uri: str
    data_fingerprint: str  # once the data is materialised, before DVC, GX or training read it
    base_fingerprint: str
    sources_fingerprint: str  # before the area is scanned
    model_name: str = ""
    area_shas: tuple[str, ...] = ()  # the area's sources as the merge plan saw them (refused files left out)
    # (store fingerprint, champion, version holding every source, how many): `nothing_to_merge` as the run left
    # the registry; see `registry_snapshot`. Empty when the store is not a local SQLite file or the answer was
    # "merge".
    decision: tuple[str, str, str, int] | tuple[()] = ()

    def same_files(self, other: RunInputs) -> bool:
        """Everything but the model and the area (known only once the run has scanned and planned) is equal."""
        return astuple(self)[:6] == astuple(other)[:6]


@functools.cache
def code_identity() -> str:
    """grasp's version and a digest of its code (`code_digest` of grasp_core and flows): a new release or a
    change to a .py file re-runs the flow (recipes may differ); a commit that touches only docs, tests or results
    does not. The commit itself stays a tag of each registered version (`code_commit`), for lineage and audit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("grasp")
    except PackageNotFoundError:
        release = "unknown"
    return f"{release}+{code_digest(code_roots())}"


def code_roots() -> list[Path]:
    """The folders of the packages whose code computes a run's result, found without importing them."""
    from importlib.util import find_spec

    roots = []
    for name in CODE_PACKAGES:
        spec = find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name  # both ship in this distribution
        roots.append(Path(list(spec.submodule_search_locations)[0]))
    return roots


def code_digest(roots: list[Path]) -> str:
    """sha256 over every .py file under `roots`, in sorted order of its path below its root's parent, each path
    then its bytes: an edit, a new, removed or renamed module changes it; any other file does not."""
    files = sorted((path.relative_to(root.parent).as_posix(), path) for root in roots for path in root.rglob("*.py"))
    digest = hashlib.sha256()
    for rel, path in files:
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())  # the length keeps file boundaries unambiguous
        digest.update(data)
    return digest.hexdigest()


def fingerprint_of(path: Path) -> str:
    """The stat fingerprint of a file or folder ("" when it is missing)."""
    return fingerprint(path) if path.exists() else ""


def inputs_now(root: Path, cfg: Config, tracking_uri: str) -> RunInputs:
    """This run's inputs in workspace `root` as they are now (model and area left empty)."""
    from grasp_core.config import config_hash

    return RunInputs(config_hash(cfg), code_identity(), tracking_uri, fingerprint_of(root / cfg.data.root),
                     fingerprint_of(root / BASE_FILE), fingerprint_of(root / SOURCES_DIR))


def forget(root: Path) -> None:
    """Drop the record: a run is starting, and until it ends well nothing is known to be current."""
    (root / RECORD).unlink(missing_ok=True)


def remember(root: Path, inputs: RunInputs) -> None:
    """Record the inputs of a run that ended well (the flow calls this last). A record that cannot be written
    (a full disk) fails nothing: the next run simply runs the flow."""
    try:
        (root / RECORD).parent.mkdir(parents=True, exist_ok=True)
        write_text_durably(root / RECORD, json.dumps({"format": _FORMAT, **asdict(inputs)}, indent=1))
    except OSError as err:
        log.warning("%s: not written (%s); the next `grasp run` runs the flow to find out", root / RECORD, err)


def recalled(root: Path) -> RunInputs | None:
    """The record of the last run that ended well, or None (missing, unreadable, or of another format)."""
    try:
        raw = json.loads((root / RECORD).read_text())
        if raw.pop("format") != _FORMAT:
            return None
        return RunInputs(**{**raw, "area_shas": tuple(raw["area_shas"]), "decision": tuple(raw["decision"])})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def same_params_as_last_run(opts: RunOptions, cfg: Config) -> bool:
    """The last good run used these params with this code and store (so its policy and criterion names were
    checked then). Reads the record only: the CLI asks this before the lock, to skip that check's torch import."""
    from flows.stores.tracking import resolve_tracking_uri
    from grasp_core.config import config_hash

    recorded = recalled(opts.workdir)
    return recorded is not None and (recorded.params_sha256, recorded.code, recorded.tracking_uri) == (
        config_hash(cfg), code_identity(), resolve_tracking_uri(opts.workdir.resolve(), opts.tracking_uri))


def unchanged_inputs(opts: RunOptions, cfg: Config) -> RunInputs | None:
    """The last good run's record when this run's params, code, store, data, base and sources are the same as
    its own; else None. Files only: no tool is asked and nothing is written."""
    from flows.stores.tracking import resolve_tracking_uri

    root = opts.workdir
    recorded = recalled(root)
    if recorded is None:
        return None
    now = inputs_now(root, cfg, resolve_tracking_uri(root.resolve(), opts.tracking_uri))
    return recorded if recorded.same_files(now) else None


def nothing_new(opts: RunOptions, cfg: Config) -> str | None:
    """The line `grasp run` prints when the flow would find nothing new, else None (then the flow runs).

    Read-only: it starts no Prefect server, writes no file, run or version, and loads neither torch nor GX.
    Call it under the workspace lock, so no other run changes the workspace meanwhile.
    """
    from flows.pipeline.plan import holds_all_line
    from flows.stores.fingerprints import fingerprints_held
    from flows.stores.validation import Expected, passed_before
    from flows.stores.versioning import is_current

    root = opts.workdir
    with fingerprints_held():  # the data folder is read once for our record, DVC's stamp and GX's
        recorded = unchanged_inputs(opts, cfg)
        if recorded is None or not recorded.model_name:
            return None
        if not all(is_current(root, target, opts.dvc_remote) for target in (cfg.data.root, SOURCES_DIR.as_posix())):
            return None
        if not passed_before(root / cfg.data.root, root / VALIDATION_DIR, Expected.from_config(cfg.validation)):
            return None
    found = _registry_holds_all(opts, recorded)
    if found is None:
        return None
    return f"{holds_all_line(*found, model_name=recorded.model_name)}; nothing registered {NO_FLOW_RUN}"


def _sqlite_store(tracking_uri: str) -> Path | None:
    """The local SQLite file of a `sqlite:///` tracking URI, else None."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def _store_fingerprint(db: Path) -> str:
    """Stat fingerprint of an SQLite store: the file and its write-ahead log or rollback journal (not `-shm`,
    which readers touch too)."""
    return "|".join(fingerprint_of(db.with_name(db.name + suffix)) for suffix in ("", "-wal", "-journal"))


def registry_snapshot(tracker: Tracker, inputs: RunInputs) -> tuple[str, str, str, int] | tuple[()]:
    """What the next run's plan will decide, read now by the flow that ends (`plan.nothing_to_merge`), with the
    store's fingerprint: while that file is unchanged, the CLI's check re-uses the answer and never imports
    MLflow. Only for a local SQLite store with no RUNNING run: the plan's answer then depends on the file alone
    (a run of a live process could die later, which changes no byte)."""
    from flows.pipeline.plan import nothing_to_merge

    db = _sqlite_store(tracker.tracking_uri)
    try:
        if db is None or tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'RUNNING'",
                                                    max_results=1):
            return ()
        found = nothing_to_merge(tracker, inputs.model_name, set(inputs.area_shas), inputs.params_sha256)
    except Exception as err:  # noqa: BLE001 - a shortcut only: without it the next check asks the store itself
        log.debug("registry snapshot skipped (%s)", err)
        return ()
    return (_store_fingerprint(db), *found) if found is not None else ()


def _registry_holds_all(opts: RunOptions, recorded: RunInputs) -> tuple[str, str, int] | None:
    """`plan.nothing_to_merge`'s answer (champion, the version holding every source, how many) when the merge plan
    would have nothing to do: the flow's own answer while the store is as it left it, else asked of the store."""
    from flows.pipeline.plan import nothing_to_merge
    from flows.stores.tracking import Tracker

    db = _sqlite_store(recorded.tracking_uri)
    if recorded.decision and db is not None and _store_fingerprint(db) == recorded.decision[0]:
        return recorded.decision[1], recorded.decision[2], recorded.decision[3]
    try:
        tracker = Tracker(opts.workdir, tracking_uri=opts.tracking_uri)
        return nothing_to_merge(tracker, recorded.model_name, set(recorded.area_shas), recorded.params_sha256)
    except Exception as err:  # noqa: BLE001 - a store that does not open or answer: the flow meets it and says so
        log.debug("registry check skipped (%s): the flow decides", err)
        return None
