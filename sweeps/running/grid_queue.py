"""The grid queue of a sweep's study: every grid point enqueued once as a WAITING trial, claimed
by one worker at a time, retried when its attempt died, and told its outcome from its record.

Facts this is built on (optuna 5.0): ``GridSampler`` runs duplicate points with parallel
workers, so every grid point is enqueued once (``enqueue_trial(..., skip_if_exists=True)``
with the grid key in ``user_attrs``) and workers claim WAITING trials themselves, running
nothing when the queue is empty (``study.ask()`` would create a fresh, un-gridded trial).
A retry is a new WAITING trial of the same point, counting one retry in its ``retries``
attribute, up to the sweep's ``max_retries``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..definition import SweepDef
from ..grid import GridPoint, canonical_value
from ..record import TrialRecord
from .study import SweepStudy, progress

log = logging.getLogger("sweeps")

GRID_ATTRS = ("grid_key", "grid_params", "variant", "seed", "extra_overrides")


def encode_value(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else canonical_value(v)


def encode_params(params: dict[str, Any]) -> dict[str, Any]:
    """Grid params as Optuna categorical values (mappings/lists become canonical JSON text)."""
    return {k: encode_value(v) for k, v in params.items()}


def grid_attrs(point: GridPoint, extra_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"grid_key": point.key, "grid_params": json.dumps(point.params, sort_keys=True), "variant": point.variant,
            "seed": point.seed, "retries": 0, "extra_overrides": json.dumps(extra_overrides or {}, sort_keys=True)}


def trial_point(t: FrozenTrial) -> GridPoint:
    return GridPoint(json.loads(t.user_attrs["grid_params"]))


def enqueue_grid(study: SweepStudy, sweep: SweepDef, extra_overrides: dict[str, dict[str, Any]] | None = None) -> int:
    """Enqueue every grid point not yet in the study; returns how many were added."""
    existing = {t.user_attrs.get("grid_key") for t in study.get_trials(deepcopy=False)}
    n = 0
    for p in sweep.points():
        if p.key in existing:
            continue
        extra = (extra_overrides or {}).get(p.variant, {})
        study.enqueue_trial(encode_params(p.params), user_attrs=grid_attrs(p, extra), skip_if_exists=True)
        n += 1
    return n


def pop_waiting(study: SweepStudy) -> optuna.trial.Trial | None:
    """Claim one WAITING trial (atomically: WAITING -> RUNNING, as ``Study.ask`` does) or return
    None; never creates a trial, so a late worker that finds the queue empty runs nothing.

    Retries go first, then the queue in enqueue order: a retry resumes its grid point's last
    checkpoint, and it belongs to an earlier part of the grid than the points enqueued after it
    (the grid runs seed by seed, reruns last), so a study stopped part-way holds whole seeds."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for t in sorted(waiting, key=lambda t: ("retry_of" not in t.user_attrs, t.number)):
        tid = study.trial_id(t.number)
        try:
            if not study.storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        return optuna.trial.Trial(study, tid)
    return None


def total_retries(t: FrozenTrial) -> int:
    """Retries used so far by the grid point of ``t`` (0 for its first attempt)."""
    return int(t.user_attrs.get("retries", 0))


def enqueue_retry(study: SweepStudy, t: FrozenTrial, reason: str, max_retries: int, count: bool = True) -> bool:
    """Re-enqueue a trial that died (its run directory, hence its last checkpoint, is keyed by
    the grid point, so the retry resumes). Returns False when the retry budget is spent."""
    retries = total_retries(t) + (1 if count else 0)
    if retries > max_retries:
        log.warning("trial %d (%s) died (%s) and has used its %d retries: left failed", t.number,
                    t.user_attrs.get("grid_key"), reason, max_retries)
        return False
    attrs = {k: v for k, v in t.user_attrs.items() if k in GRID_ATTRS}
    attrs.update(retries=retries, retry_of=t.number, retry_reason=reason)
    study.enqueue_trial(encode_params(json.loads(t.user_attrs["grid_params"])), user_attrs=attrs)
    return True


def fail_trial(study: SweepStudy, number: int, reason: str, final: bool) -> bool:
    """RUNNING -> FAIL with a reason; False when another process finished it first."""
    tid = study.trial_id(number)
    try:
        study.storage.set_trial_user_attr(tid, "fail_reason", reason)
        study.storage.set_trial_user_attr(tid, "final_failure", bool(final))
        return bool(study.storage.set_trial_state_values(tid, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def fail_and_retry(study: SweepStudy, number: int, reason: str, max_retries: int, count: bool = True) -> bool:
    """Fail a RUNNING grid trial and re-enqueue its point (the one retry path). True when this
    call failed it (False: another process finished it first)."""
    frozen = study.storage.get_trial(study.trial_id(number))
    final = count and total_retries(frozen) + 1 > max_retries
    if not fail_trial(study, number, reason, final=final):
        return False
    enqueue_retry(study, frozen, reason, max_retries, count=count)
    return True


def report_record(study: SweepStudy, number: int, rec: TrialRecord, record_path: str | os.PathLike) -> str:
    """Tell Optuna the outcome a trial's record says (complete -> its value, pruned, failed with
    the recorded reason: a divergence is deterministic and not retried), with the record's
    scalar fields as user attributes. Returns the state told."""
    trial = study.trial_handle(number)
    for k, v in {"status": rec.status, "reason": rec.reason, "value": rec.value,
                 "record_path": str(record_path)}.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("record", {k[2:]: v for k, v in rec.user_attrs().items()})
    if rec.status == "complete":
        study.tell(trial, rec.value)
        return "complete"
    if rec.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    trial.set_user_attr("fail_reason", rec.reason)
    trial.set_user_attr("final_failure", True)
    study.tell(trial, state=TrialState.FAIL)
    return "failed"



def requeue_failed(study: SweepStudy) -> int:
    """Re-enqueue grid points whose every trial failed (``--retry-failed``)."""
    prog = progress(study)
    n = 0
    for key, st in prog.points.items():
        if st == "failed":
            t = prog.last_trial[key]
            attrs = {k: v for k, v in t.user_attrs.items() if k in GRID_ATTRS}
            attrs.update(retries=0, retry_of=t.number, retry_reason="--retry-failed")
            study.enqueue_trial(encode_params(json.loads(t.user_attrs["grid_params"])), user_attrs=attrs)
            n += 1
    return n

