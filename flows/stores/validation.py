"""The data gate: a Great Expectations 1.x suite over the tables of `grasp_core.data.summary`.

Great Expectations is imported only where a suite runs (4-5 s): in a `GxWorker` process, or in `_validate`,
so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from grasp_core.errors import DataLayoutError, GraspError

if TYPE_CHECKING:  # grasp_core.data loads torch: this module stays torch-free at import (`passed_before` is cheap)
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations import Expectation

    from grasp_core.config import ValidationConfig
    from grasp_core.data.summary import SummaryTables

T = TypeVar("T")

RESULT_FILE = "gx_validation.json"
# Columns that name an offending row, per table; GX reports them with each unexpected value.
INDEX_COLUMNS = {"splits": ["domain", "split", "per_class_counts"], "files": ["domain", "split", "path"]}
SHOWN = {"splits": 6, "files": 3}  # offending rows named per failed expectation in the error message
# Split expectations other than `present` skip missing splits, so a missing split fails one expectation, not four.
_ONLY_PRESENT: dict[str, Any] = {"row_condition": "present==True", "condition_parser": "pandas"}


class DataValidationError(GraspError):
    """The data folder fails the validation suite; the message names each failed expectation and where."""


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of `validate_dataset` on data that passed (data that fails raises instead)."""

    success: bool
    evaluated: int  # expectations evaluated, both tables together
    failed: int
    result_path: Path  # the full GX validation results, as JSON
    summary_lines: list[str]  # for the terminal


@dataclass(frozen=True)
class Expected:
    """The gate's knobs (grasp_core.config.ValidationConfig): 0 / "auto" / () judge the data by its majority."""

    min_per_class: int = 1
    image_size: int = 0
    channels: str = "auto"  # auto | grey | rgb
    classes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: ValidationConfig) -> Expected:
        """From params.yaml's `validation` section."""
        return cls(cfg.min_per_class, cfg.image_size, cfg.channels, tuple(cfg.classes))


CHANNELS = {"grey": 1, "rgb": 3}


def validate_dataset(root: Path, out_dir: Path, min_per_class: int = 1,
                     worker: GxWorker | None = None, expected: Expected | None = None) -> ValidationReport:
    """Validate the data folder `root` with a GX suite and write the results to `out_dir/gx_validation.json`.

    The JSON is written whether the data passes or not (there is none when `root` has no domain to validate).

    Args:
        root: data folder, `<root>/<domain>/{train,val,test}/<class>/*.png`.
        out_dir: folder for the JSON results; created when missing.
        min_per_class: fewest readable images any class folder of any split may hold (when no `expected`).
        expected: the gate's knobs from params.yaml `validation` (min_per_class included).
        worker: run the summary and the suites in this prewarmed GX process (see `prewarmed_gx`); the
            unchanged-data check stays here. None: in this process.

    Raises:
        DataValidationError: `root` is missing or holds no domain, or an expectation fails; the message has one
            line per failed expectation naming the column, the domain/split or files at fault, and the values.
    """
    expected = expected or Expected(min_per_class)
    stamp = _stamp(root, expected)
    if (passed := _passed_before(out_dir / RESULT_FILE, stamp)) is not None:
        return passed
    if worker is not None:
        return worker.run(_validate, root, out_dir, expected, stamp)
    return _validate(root, out_dir, expected, stamp)


def _validate(root: Path, out_dir: Path, expected: Expected, stamp: dict[str, Any]) -> ValidationReport:
    """Summarise `root`, run the suites, write the results (module level: a GxWorker runs it)."""
    from grasp_core.data.summary import summarise

    try:
        tables = summarise(root)
    except DataLayoutError as err:
        raise DataValidationError(f"data validation failed: {err}") from None
    results = _run_suites(tables, expected)
    evaluated = sum(res.statistics["evaluated_expectations"] for res in results.values())
    failures = [_failure_line(table, r) for table, res in results.items() for r in res.results if not r.success]
    lines = [] if failures else _passed_lines(tables, evaluated)
    result_path = _write_results(results, root, out_dir / RESULT_FILE, {**stamp, "summary_lines": lines})
    if failures:
        head = f"data validation failed: {len(failures)} of {evaluated} expectations for {root}"
        raise DataValidationError("\n".join([head, *failures, f"full GX results: {result_path}"]))
    return ValidationReport(success=True, evaluated=evaluated, failed=0, result_path=result_path,
                            summary_lines=lines)


class GxWorker:
    """Great Expectations in a process of its own, imported before it is needed.

    GX's import (~4-5 s of CPU) then runs on the other core while this process writes the data, and the
    flow's process (training, Prefect's client) never holds GX or contends with it for the GIL. Results and
    errors (DataValidationError) come back pickled; a worker that cannot start falls back to this process.
    """

    def __init__(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_import_gx)
        self._ready = self._pool.submit(os.getpid)  # starts the process (and its import) now

    def run(self, fn: Callable[..., T], *args: object) -> T:
        from concurrent.futures.process import BrokenProcessPool

        try:
            self._ready.result()
        except BrokenProcessPool:  # GX failed to import there: let it fail (or work) here, with its own error
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        """Let the process go; it exits on its own (GX's teardown costs ~2 s that nobody needs to wait for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _import_gx() -> None:
    import great_expectations  # noqa: F401
    import pandas  # noqa: F401

    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def last_validation_passed(out_dir: Path) -> bool:
    """The last validation written to `out_dir` passed (a cheap guess that the gate will be skipped)."""
    try:
        return json.loads((out_dir / RESULT_FILE).read_text()).get("success") is True
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def prewarmed_gx(out_dir: Path) -> Iterator[GxWorker | None]:
    """A GxWorker for the gate, unless the last validation in `out_dir` passed: then the data most likely
    did not change and the gate costs a fingerprint only (a stale guess just validates in this process)."""
    worker = None if last_validation_passed(out_dir) else GxWorker()
    try:
        yield worker
    finally:
        if worker is not None:
            worker.close()


def _stamp(root: Path, expected: Expected) -> dict[str, Any]:
    """What a pass depends on: every file's (path, size, mtime, inode) under `root`, the suite's code, its knobs."""
    import hashlib
    from importlib.resources import files

    from flows.stores.fingerprints import fingerprint

    summary_code = (files("grasp_core") / "data" / "summary.py").read_bytes()  # located without importing it
    suite = hashlib.sha256(Path(__file__).read_bytes() + summary_code)
    return {"data_fingerprint": fingerprint(root) if root.is_dir() else "", "suite_sha256": suite.hexdigest(),
            "min_per_class": expected.min_per_class, "image_size": expected.image_size,
            "channels": expected.channels, "classes": list(expected.classes)}


def passed_before(root: Path, out_dir: Path, expected: Expected) -> bool:
    """True when `validate_dataset(root, out_dir, expected=expected)` would pass without running GX: its last
    result in `out_dir` passed on exactly this data, suite and knobs. Read-only, and neither GX nor torch loads."""
    return _passed_before(out_dir / RESULT_FILE, _stamp(root, expected)) is not None


def _passed_before(path: Path, stamp: dict[str, Any]) -> ValidationReport | None:
    """The previous report when it passed on exactly this data and suite (nothing changed: no need to re-run GX).

    The stamp is the same stat fingerprint DVC's state cache trusts: any edit, added or removed file changes it.
    """
    try:
        payload = json.loads(path.read_text())
        previous = payload["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not payload.get("success") or not stamp["data_fingerprint"] or \
            {k: previous.get(k) for k in stamp} != stamp:
        return None
    evaluated = int(payload["statistics"]["evaluated_expectations"])
    lines = [*previous.get("summary_lines", []), "(unchanged since that validation: GX not re-run)"]
    return ValidationReport(success=True, evaluated=evaluated, failed=0, result_path=path, summary_lines=lines)


def _run_suites(tables: SummaryTables, expected: Expected) -> dict[str, ExpectationSuiteValidationResult]:
    """Run one suite per table in an ephemeral GX context (nothing written to disk by GX)."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are noise here
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # else tqdm bars on stderr
    source = context.data_sources.add_pandas("grasp_data")
    from grasp_core.data.summary import FILE_COLUMNS, SPLIT_COLUMNS

    frames = {"splits": pd.DataFrame(tables.splits, columns=list(SPLIT_COLUMNS)),
              "files": pd.DataFrame(tables.files, columns=list(FILE_COLUMNS))}
    results = {}
    for table, expectations in build_expectations(tables, expected).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all_rows")
        suite = context.suites.add(gx.ExpectationSuite(name=f"grasp_{table}", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"grasp_{table}", data=batch, suite=suite))
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 20,
                         "unexpected_index_column_names": INDEX_COLUMNS[table]}
        results[table] = definition.run(batch_parameters={"dataframe": frames[table]}, result_format=result_format)
    return results


def build_expectations(tables: SummaryTables, expected: Expected) -> dict[str, list[Expectation]]:
    """The suite, per table; each expectation's `meta["hint"]` says how to fix a failure."""
    import great_expectations.expectations as gxe

    min_per_class = expected.min_per_class
    first = "validation.classes" if expected.classes else f"{tables.splits[0]['domain']}/train"
    names = list(expected.classes) if expected.classes else tables.classes
    classes = ",".join(names)
    splits: list[Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(column="present", value_set=[True],
                                        meta={"hint": "every domain needs train, val and test folders"}),
        gxe.ExpectColumnValuesToBeBetween(column="image_count", min_value=1, **_ONLY_PRESENT,
                                          meta={"hint": "the split holds no readable image"}),
        gxe.ExpectColumnValuesToBeInSet(column="classes", value_set=[classes], **_ONLY_PRESENT,
                                        meta={"hint": f"every split needs the class folders of {first}"}),
        gxe.ExpectColumnValuesToBeBetween(column="min_per_class", min_value=min_per_class, **_ONLY_PRESENT,
                                          meta={"hint": f"every class folder needs {min_per_class}+ readable images"}),
    ]
    files: list[Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], meta={
            "hint": "not a decodable .png/.jpg/.jpeg image (junk, truncated or empty); remove or replace it"}),
        gxe.ExpectColumnValuesToBeUnique(column="sha256", meta={
            "hint": "byte-identical files; keep one (a copy across splits leaks evaluation data)"}),
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=max(len(tables.classes) - 1, 0),
                                          meta={"hint": f"class folder unknown to {tables.splits[0]['domain']}/train; "
                                                "rename or remove it"}),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=255, meta={"hint": "8-bit pixels"})
          for c in ("pixel_min", "pixel_max")),
        *(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[v], meta={
            "hint": f"every image needs {why} {c} ({v}); {'convert' if c == 'channels' else 'resize'} it"})
          for c, (v, why) in _shape_expected(tables.files, expected).items()),
    ]
    return {"splits": splits, "files": files}


def _shape_expected(files: list[dict[str, Any]], expected: Expected) -> dict[str, tuple[int, str]]:
    """column -> (value every image must have, where it comes from): params.yaml `validation`, else the data's
    most common value."""
    found = {c: (v, "the most common") for c, v in _common_shape(files).items()}
    if expected.image_size:
        found.update(height=(expected.image_size, "validation.image_size"),
                     width=(expected.image_size, "validation.image_size"))
    if expected.channels in CHANNELS:
        found["channels"] = (CHANNELS[expected.channels], "validation.channels")
    return found


def _common_shape(files: list[dict[str, Any]]) -> dict[str, int]:
    """The most common channels, height and width of readable images (empty when none is readable)."""
    readable = [f for f in files if f["readable"]]
    return {c: Counter(f[c] for f in readable).most_common(1)[0][0] for c in ("channels", "height", "width")
            if readable}


def _failure_line(table: str, result: ExpectationValidationResult) -> str:
    """`- <table>.<column> <expectation>(<expected>): <n> of <m> <table> fail: <where> = <value>, ...; <hint>`."""
    config = result.expectation_config
    assert config is not None  # GX attaches it to every result of a suite run
    name = f"- {table}.{config.kwargs.get('column', '(table)')} {config.type}({_expected(config.kwargs)})"
    info, shown = result.result or {}, SHOWN[table]
    if "unexpected_count" not in info:
        return f"{name}: GX could not evaluate it: {_exception_text(result.exception_info or {})}"
    rows = info.get("partial_unexpected_index_list") or []
    where = ", ".join(_where(table, row, config.kwargs) for row in rows[:shown])
    more = info["unexpected_count"] - len(rows[:shown])
    where += f" (+{more} more)" if more > 0 else ""
    hint = (config.meta or {}).get("hint", "")
    return f"{name}: {info['unexpected_count']} of {info.get('element_count')} {table} fail: {where}; {hint}"


def _exception_text(exception_info: dict[str, Any]) -> str:
    """The exception messages in a GX exception_info, flat or keyed by metric."""
    nested = [v.get("exception_message") for v in exception_info.values() if isinstance(v, dict)]
    return "; ".join(dict.fromkeys(filter(None, nested))) or str(exception_info.get("exception_message"))


def _expected(kwargs: dict[str, Any]) -> str:
    if "value_set" in kwargs:
        return f"in {_show(kwargs['value_set'])}"
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"{_show(low)}..{_show(high)}"
    return f">= {_show(low)}" if low is not None else f"<= {_show(high)}" if high is not None else ""


def _where(table: str, row: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """`<domain>/<split>` or the file path, then what was found there."""
    place = row["path"] if table == "files" else f"{row['domain']}/{row['split']}"
    column, value = kwargs["column"], row.get(kwargs["column"])
    if column == "classes":
        found, wanted = (set(filter(None, str(v).split(","))) for v in (value, kwargs["value_set"][0]))
        lacks, extra = sorted(wanted - found), sorted(found - wanted)
        return place + " " + " and ".join([f"lacks {lacks}"] * bool(lacks) + [f"has {extra}"] * bool(extra))
    if column == "min_per_class":
        counts = json.loads(row["per_class_counts"])
        small = [f"{place}/{name} = {n}" for name, n in counts.items() if n < kwargs["min_value"]]
        return ", ".join(small) or f"{place} = {_show(value)}"
    return f"{place} = {_show(value)}"


def _show(value: Any) -> str:
    """A short readable value: numpy scalars unwrapped, 2.0 as 2, long strings (sha256) cut."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value[:12] + "...") if isinstance(value, str) and len(value) > 40 else repr(value)


def _write_results(results: dict[str, ExpectationSuiteValidationResult], root: Path, path: Path,
                   stamp: dict[str, Any]) -> Path:
    """Write both tables' GX results as one JSON document, atomically (tmp + rename)."""
    failed = sum(res.statistics["unsuccessful_expectations"] for res in results.values())
    evaluated = sum(res.statistics["evaluated_expectations"] for res in results.values())
    payload = {"success": failed == 0, "data_root": str(root), "stamp": stamp,
               "statistics": {"evaluated_expectations": evaluated, "unsuccessful_expectations": failed},
               "validations": {table: res.to_json_dict() for table, res in results.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
    return path


def _passed_lines(tables: SummaryTables, evaluated: int) -> list[str]:
    present: list[dict[str, Any]] = [s for s in tables.splits if s["present"]]
    smallest = min(present, key=lambda s: s["min_per_class"])
    shape = _common_shape(tables.files)
    return [f"data validation passed: {evaluated} of {evaluated} expectations for {tables.root}",
            f"{len({s['domain'] for s in present})} domains x 3 splits, {len(tables.classes)} classes, "
            f"{len(tables.files)} images of {shape['height']}x{shape['width']}x{shape['channels']}, "
            f"fewest per class {smallest['min_per_class']} ({smallest['domain']}/{smallest['split']})"]
