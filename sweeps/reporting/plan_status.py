"""Whether a study's results were judged by a plan fixed before them: *pre-specified* when the
analysis plan in force was recorded (``results/<sweep>/analysis_plans.json``) before the first
trial it covers finished, else *exploratory*; and every plan change made after covered trials
had finished, with its time. Frames in, a :class:`PlanStatus` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from ..analysis_plan import RecordedPlan, plan_hash
from ..sweep_schema import AnalysisSection

PRESPECIFIED = "pre-specified"
EXPLORATORY = "exploratory"


@dataclass
class PlanStatus:
    """What :func:`plan_status` found. ``label``: :data:`PRESPECIFIED` or :data:`EXPLORATORY`;
    ``reason``: why, in one sentence."""

    label: str
    reason: str
    plan_hash: str | None = None
    recorded_at: str | None = None
    first_finished: str | None = None      # the first covered trial's end
    covered: int = 0                       # complete records the plan covers
    under_plan: int = 0                    # ... of which ran under this plan's hash
    later_changes: list[RecordedPlan] = field(default_factory=list)  # changes after covered trials finished

    @property
    def prespecified(self) -> bool:
        return self.label == PRESPECIFIED


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def covered_records(plan: AnalysisSection, records: pd.DataFrame, ladder: list[str]) -> pd.DataFrame:
    """The complete records a plan covers: its seeds, and the variants its contrasts name or
    the ladder its frontier is fitted to."""
    if not len(records) or "status" not in records.columns:
        return records.iloc[0:0]
    named = {v for c in plan.contrasts for v in c.variants + [c.against]} | set(ladder)
    done = records[(records["status"] == "complete") & records["seed"].isin(plan.seeds)]
    return done[done["variant"].isin(named)]


def plan_status(plan_dict: dict | None, records: pd.DataFrame, plans: list[RecordedPlan],
                ladder: list[str]) -> PlanStatus:
    """The status of the plan ``plan_dict`` (the sweep's ``analysis:``, validated; None: no
    plan) over ``records`` (a records frame with ``finished_at`` and ``analysis_plan``), given
    the study's plans log ``plans`` and the static ``ladder``."""
    if not plan_dict:
        return PlanStatus(EXPLORATORY, "the sweep has no analysis plan (`analysis:`): every result here is "
                                       "exploratory, its analysis chosen with the data in view")
    h = plan_hash(plan_dict)
    cov = covered_records(AnalysisSection.model_validate(plan_dict), records, ladder)
    finished = sorted(t for t in cov.get("finished_at", pd.Series(dtype=object)).dropna())
    first = finished[0] if finished else None
    mine = [p for p in plans if p.hash == h]
    recorded = mine[0].recorded_at if mine else None
    under = int((cov["analysis_plan"] == h).sum()) if "analysis_plan" in cov.columns else 0
    # a change replaces an earlier plan: a study's first plan, however late, changes none
    later = [p for i, p in enumerate(plans) if first is not None and p.time > _time(first)
             and i > 0 and plans[i - 1].hash != p.hash]
    status = PlanStatus(EXPLORATORY, "", h, recorded, first, len(cov), under, later)
    if recorded is None:
        status.reason = f"plan {h} is not in the study's plans log: it was never in force for a run"
    elif first is not None and _time(recorded) >= _time(first):
        status.reason = (f"plan {h} was recorded at {recorded}, after the first trial it covers finished "
                         f"({first}): every result it covers is exploratory")
    else:
        status.label = PRESPECIFIED
        status.reason = (f"plan {h} was recorded at {recorded}, before the first trial it covers finished"
                         + (f" ({first})" if first else " (none has yet)"))
    return status
