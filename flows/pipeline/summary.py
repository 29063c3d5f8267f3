"""What a pipeline run hands back (FlowSummary) and what one target's run carries from its preparation to
its merge (Prepared)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flows.pipeline.stage import StepArtifact
from flows.pipeline.workspace import Workspace
from flows.reports.progress import Progress
from flows.runtime.execution import AUTO, Compute

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from flows.pipeline.plan import MergePlan
    from flows.pipeline.up_to_date import RunInputs
    from flows.stores.tracking import Tracker
    from flows.stores.versioning import TrackedOutput
    from grasp_core.config import Config


@dataclass
class FlowSummary:
    target: str
    sources: list[str]
    model_name: str
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    aliases_version: str = ""  # the version the aliases point at (the last, or the best with keep_global_best)
    steps: list[StepArtifact] = field(default_factory=list)
    parent_run_id: str = ""
    parent_version: str = ""  # the version an incremental run started from ("" = from scratch)
    merged_before: int = 0  # sources already in that version's lineage
    champion: str = ""  # the champion then; parent_version differs when it was a challenger awaiting promotion
    all_sources: list[str] = field(default_factory=list)  # every source in the area (baselines use them all)
    data_md5: str = ""
    sources_trained: int = 0
    methods: list[dict] = field(default_factory=list)  # baseline rows when --baselines
    skipped: list[dict] = field(default_factory=list)  # refused source files left out (on_bad_source: skip)
    resumed: bool = False  # continued the last version of an interrupted run (parent_version)
    report: str = ""  # path of the lineage plot (accuracy and memory along the merge steps)
    promotion: str = ""  # the gate's message when auto_promote
    report_html: str = ""  # self-contained HTML report of the run (also an MLflow artifact)


@dataclass
class Prepared:
    """One target's run up to the merge: checked, versioned, planned, with its tags (see _prepare)."""

    cfg: Config  # with this target
    ws: Workspace
    progress: Progress
    classes: list[str]
    summary: FlowSummary
    tracker: Tracker
    plan: MergePlan  # its sources in merge order
    inputs: RunInputs  # what this run worked on, recorded when it ends well (flows/pipeline/up_to_date.py)
    data_v: PrefectFuture[TrackedOutput]  # futures of DVC outputs: the data added, the sources added and pushed,
    src_v: PrefectFuture[TrackedOutput]
    data_push: PrefectFuture[TrackedOutput]  # and the data pushed (awaited before any alias moves)
    run_tags: dict[str, str] = field(default_factory=dict)
    start_tags: dict[str, str] = field(default_factory=dict)  # stage 0's `transfer.start` (pipeline/start.py)
    params_path: str = ""
    compute: Compute = AUTO  # where and how its stages compute
    done: bool = False  # nothing to merge: `summary` is final
