"""The analysis plan of a study (the sweep file's ``analysis:`` section): its checks against the
grid, its hash, and the log of when each plan was recorded.

A plan fixes, before the runs it covers, how their results are judged: the frontier model per
cost axis, the primary axes, named contrasts, the seeds it covers, alpha and the multiplicity
correction. Every trial record holds the hash of the plan in force when the trial started; the
driver appends each new plan to ``results/<sweep>/analysis_plans.json`` (time, hash, plan)
before it starts a trial, so that ``make results`` can say whether the plan behind a result was
recorded before the first trial it covers finished (*pre-specified*) or not (*exploratory*).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lightning_modules.contract import write_json_atomic

from .layout import SweepLayout
from .sweep_schema import AnalysisSection

FRONTIER = "frontier"


def plan_hash(plan: dict[str, Any] | None) -> str | None:
    """A short, stable hash of a plan (the validated section as JSON, keys sorted); None without one."""
    if not plan:
        return None
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_errors(section: AnalysisSection, variants: list[str], seeds: list[Any], static_widths: list[float]
                ) -> list[str]:
    """What is wrong with a plan against its grid (``variants``: the grid's variant labels,
    ``seeds``: its seeds, ``static_widths``: the widths the static variant runs at); empty when
    nothing is."""
    errors = []
    names = [c.name for c in section.contrasts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f"'analysis.contrasts' names {dup} twice; give each contrast its own name")
    for i, c in enumerate(section.contrasts):
        for v in c.variants + ([] if c.against == FRONTIER else [c.against]):
            if v not in variants:
                errors.append(f"'analysis.contrasts[{i}]' ({c.name}) names {v!r}, not a variant of the grid; "
                              f"valid: {', '.join(variants)}" + ("" if v != c.against else f", or {FRONTIER}"))
        if c.against in c.variants:
            errors.append(f"'analysis.contrasts[{i}]' ({c.name}) compares {c.against!r} with itself")
    unknown_seeds = [s for s in section.seeds if s not in seeds]
    if unknown_seeds:
        errors.append(f"'analysis.seeds' {unknown_seeds} are not seeds of the grid; valid: {seeds}")
    unknown_widths = [w for w in section.frontier_widths or [] if w not in static_widths]
    if unknown_widths:
        errors.append(f"'analysis.frontier_widths' {unknown_widths} are not widths the grid runs static at; "
                      f"valid: {static_widths}")
    if section.contrasts and not any(c.role == "primary" for c in section.contrasts):
        errors.append("'analysis.contrasts' has no primary contrast; mark the one the study is for with role: primary")
    return errors


@dataclass(frozen=True)
class RecordedPlan:
    """One entry of the plans log: when a plan was first in force for a run of the study."""

    hash: str
    recorded_at: str  # ISO 8601, UTC
    plan: dict[str, Any]

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.recorded_at)


def read_plans(layout: SweepLayout) -> list[RecordedPlan]:
    """The study's plans log, oldest first; empty when there is none."""
    try:
        entries = json.loads(layout.plans.read_text())["plans"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [RecordedPlan(e["hash"], e["recorded_at"], e["plan"]) for e in entries]


def record_plan(layout: SweepLayout, plan: dict[str, Any] | None, now: datetime | None = None) -> RecordedPlan | None:
    """Append ``plan`` to the study's plans log unless it is already the last entry (a run that
    resumes under the same plan records nothing). Called by the driver before any trial starts."""
    h = plan_hash(plan)
    if h is None:
        return None
    plans = read_plans(layout)
    if plans and plans[-1].hash == h:
        return plans[-1]
    entry = RecordedPlan(h, (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"), plan)
    write_json_atomic(layout.plans, {"plans": [vars(p) for p in plans + [entry]]}, indent=1)
    return entry
