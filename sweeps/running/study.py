"""A sweep's Optuna study: the handle workers and the driver share, the drain flag, and the
progress of its grid points (counts, each running trial's epoch, the expected time left).

The study is created once by the driver before workers start. The grid queue is
:mod:`sweeps.running.grid_queue`; liveness and reaping :mod:`sweeps.running.liveness`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .storage import ResilientStorage

HOST = socket.gethostname()


class SweepStudy(optuna.Study):
    """An Optuna study that keeps a public handle on its storage, for the two things
    ``optuna.Study`` has no method for: claiming a queued trial without creating one, and
    failing a trial that another (dead) process owns."""

    def __init__(self, study_name: str, storage: ResilientStorage, sampler: optuna.samplers.BaseSampler | None = None,
                 pruner: optuna.pruners.BasePruner | None = None):
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)

    def trial_id(self, number: int) -> int:
        """The storage's id of this study's trial ``number``."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def trial_handle(self, number: int) -> optuna.trial.Trial:
        """A live :class:`optuna.trial.Trial` of a RUNNING trial (to tell it, set attributes, report)."""
        return optuna.trial.Trial(self, self.trial_id(number))


@dataclass
class Claim:
    """A trial this worker owns: ``spec`` is what the trial process runs (see :mod:`sweeps.running.trial`);
    ``requeue``: a failed attempt is re-enqueued (grid points), or failed for good (tuning
    trials, which the sampler replaces)."""

    study: SweepStudy
    trial: optuna.trial.Trial
    spec: dict[str, Any]
    requeue: bool


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The tuning stage's pruner by its name in the sweep YAML (``tune.pruner``): median | none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def create_study(storage: ResilientStorage, study_name: str, sampler: optuna.samplers.BaseSampler | None = None,
                 pruner: optuna.pruners.BasePruner | None = None) -> SweepStudy:
    optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    return SweepStudy(study_name, storage, sampler, pruner)


def load_study(storage: ResilientStorage, study_name: str, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> SweepStudy:
    """The study ``study_name``; ``KeyError`` when the storage has no such study."""
    return SweepStudy(study_name, storage, sampler, pruner)


# --- draining ----------------------------------------------------------------------------

DRAIN_ATTR = "drain_requested"  # study user attribute: {"at": unix time, "host": ...} or None


def request_drain(study: optuna.Study) -> None:
    """Ask every worker of the study, on every machine, to claim no new trial: running trials
    finish and are reported, then the workers and their drivers stop (``odconv-sweep drain``)."""
    study.set_user_attr(DRAIN_ATTR, {"at": time.time(), "host": HOST})


def drain_requested(study: optuna.Study) -> bool:
    """Whether :func:`request_drain` was called since the study was last started."""
    return bool(study.user_attrs.get(DRAIN_ATTR))


def clear_drain(study: optuna.Study) -> None:
    """Forget a drain request: the next ``odconv-sweep run`` goes on with the queue."""
    if drain_requested(study):
        study.set_user_attr(DRAIN_ATTR, None)


# --- progress ----------------------------------------------------------------------------

#: Trial user attribute with how far a running trial is: ``{"epoch": k, "max_epochs": N,
#: "start_epoch": s}`` (k epochs finished of N; s: where this attempt's fit started, >0 when it
#: resumed). Its worker copies it from the trial's ``<run_dir>/progress.json``
#: (:class:`lightning_modules.callbacks.EpochProgress`) with every heartbeat.
PROGRESS_ATTR = "progress"


@dataclass
class Progress:
    points: dict[str, str] = field(default_factory=dict)          # grid key -> done|running|waiting|failed
    last_trial: dict[str, FrozenTrial] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)          # seconds of completed trials
    completed_trials: list[FrozenTrial] = field(default_factory=list)
    variants: dict[str, str] = field(default_factory=dict)        # grid key -> variant, where known

    def count(self, state: str) -> int:
        return sum(1 for s in self.points.values() if s == state)

    def running_trials(self) -> list[FrozenTrial]:
        """The RUNNING trial of each running point, in grid-key order."""
        return [self.last_trial[k] for k, st in sorted(self.points.items()) if st == "running"]


_RANK = {"done": 4, "running": 3, "waiting": 2, "failed": 1}


def progress(study: optuna.Study, expected_keys: list[str] | None = None,
             variants: dict[str, str] | None = None) -> Progress:
    """The state of every grid point. ``expected_keys``: the sweep's points (those not yet in
    the study are ``missing``); ``variants``: grid key -> variant of those points (for the
    time left of points not yet in the study)."""
    p = Progress(variants=dict(variants or {}))
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("grid_key")
        if key is None:
            continue
        if t.user_attrs.get("variant") is not None:
            p.variants.setdefault(key, str(t.user_attrs["variant"]))
        st = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running",
              TrialState.WAITING: "waiting"}.get(t.state, "failed")
        if _RANK[st] >= _RANK.get(p.points.get(key, ""), 0):
            p.points[key] = st
            p.last_trial[key] = t
        if t.state == TrialState.COMPLETE:
            p.completed_trials.append(t)
            if t.datetime_start and t.datetime_complete:
                p.durations.append((t.datetime_complete - t.datetime_start).total_seconds())
    for k in expected_keys or []:
        p.points.setdefault(k, "missing")
    return p


def trial_epoch(t: FrozenTrial) -> tuple[int, int | None] | None:
    """(epochs finished, planned epochs or None) of a trial, from its :data:`PROGRESS_ATTR`;
    None when its worker has not reported any yet."""
    prog = t.user_attrs.get(PROGRESS_ATTR)
    if not isinstance(prog, dict) or not isinstance(prog.get("epoch"), int):
        return None
    n = prog.get("max_epochs")
    return prog["epoch"], (int(n) if isinstance(n, int) and n > 0 else None)


def format_epoch(t: FrozenTrial) -> str:
    """``k/N`` (epochs finished of planned) of a running trial, ``k`` when N is unknown, ``?``
    before its first report."""
    ep = trial_epoch(t)
    if ep is None:
        return "?"
    return f"{ep[0]}/{ep[1]}" if ep[1] else str(ep[0])


def full_trial_seconds(t: FrozenTrial) -> float | None:
    """Wall time of a COMPLETE trial that trained from epoch 0 (Optuna's start to complete:
    start-up, fit, test and cost measurements); None for other trials, and for one that
    resumed from a checkpoint (its time covers only part of the fit)."""
    if t.state != TrialState.COMPLETE or not (t.datetime_start and t.datetime_complete):
        return None
    record = t.user_attrs.get("record") or {}
    prog = t.user_attrs.get(PROGRESS_ATTR) or {}
    if record.get("resumed_from") or (isinstance(prog, dict) and prog.get("start_epoch")):
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def variant_seconds(p: Progress) -> dict[str, float]:
    """Each variant's mean wall time of a whole trial, over its finished trials that trained
    from epoch 0 (:func:`full_trial_seconds`); variants without one are left out."""
    times: dict[str, list[float]] = {}
    for t in p.completed_trials:
        secs = full_trial_seconds(t)
        if secs is not None and t.user_attrs.get("variant") is not None:
            times.setdefault(str(t.user_attrs["variant"]), []).append(secs)
    return {v: sum(x) / len(x) for v, x in times.items()}


def running_pace_seconds(p: Progress, now: float | None = None) -> dict[str, float]:
    """Each variant's whole-trial wall time extrapolated from the pace of its running trials:
    a trial that started ``s`` seconds ago at epoch k0 and is now at epoch k of N (its
    heartbeat) trains N epochs in ``s x N / (k - k0)``; the mean over the variant's running
    trials with at least one epoch since they started (its start-up is spread over those
    epochs; its test and cost measurements at the end are not seen yet)."""
    now = time.time() if now is None else now
    paces: dict[str, list[float]] = {}
    for t in p.running_trials():
        ep, prog = trial_epoch(t), t.user_attrs.get(PROGRESS_ATTR) or {}
        variant = t.user_attrs.get("variant")
        start_epoch = prog.get("start_epoch") if isinstance(prog.get("start_epoch"), int) else 0
        if ep is None or not ep[1] or ep[0] <= start_epoch or variant is None or t.datetime_start is None:
            continue
        elapsed = now - t.datetime_start.timestamp()
        paces.setdefault(str(variant), []).append(elapsed * ep[1] / (ep[0] - start_epoch))
    return {v: sum(x) / len(x) for v, x in paces.items()}


@dataclass
class TimeLeft:
    """The sweep's expected time left (:func:`time_left`)."""

    seconds: float | None      # None: unknown (no finished or running trial to measure a pace from)
    workers: int               # the trials assumed to run at a time
    assumed: list[str] = field(default_factory=list)  # variants without any pace (given the measured ones' mean)
    paced: list[str] = field(default_factory=list)    # variants timed by a running trial's pace only


def time_left(p: Progress, workers: int = 1, now: float | None = None) -> TimeLeft:
    """Expected wall time until every running, waiting and missing point is done.

    The rule: a variant's trial takes ``D`` = the mean wall time of its finished trials that
    trained from epoch 0 (:func:`variant_seconds`); a variant without one but with a running
    trial past its first epoch takes that trial's pace (:func:`running_pace_seconds`, listed in
    ``paced``); any other variant takes the mean ``D`` of the variants measured either way
    (listed in ``assumed``); with nothing measured the time left is unknown. A waiting (or
    missing) point needs ``D``; a running trial at epoch k of N (its heartbeat) needs
    ``D x (N - k) / N``, one not yet at its first report
    ``max(D - its time so far, 0)``. The sum is divided by ``workers``, the trials that run at
    a time (at least the running ones). Failed points need nothing (``--retry-failed``
    re-queues them)."""
    now = time.time() if now is None else now
    workers = max(1, workers, p.count("running"))
    per_variant = variant_seconds(p)
    paced = {v: d for v, d in running_pace_seconds(p, now).items() if v not in per_variant}
    per_variant.update(paced)
    fallback = sum(per_variant.values()) / len(per_variant) if per_variant else None
    total, assumed = 0.0, set()
    for key, state in p.points.items():
        if state not in ("running", "waiting", "missing"):
            continue
        variant = p.variants.get(key)
        d = per_variant.get(variant) if variant is not None else None
        if d is None:
            if fallback is None:
                return TimeLeft(None, workers)
            d = fallback
            assumed.add(variant or key)
        if state == "running":
            t = p.last_trial[key]
            ep = trial_epoch(t)
            if ep is not None and ep[1]:
                d *= max(ep[1] - ep[0], 0) / ep[1]
            elif t.datetime_start is not None:
                d = max(d - (now - t.datetime_start.timestamp()), 0.0)
        total += d
    return TimeLeft(total / workers, workers, sorted(assumed), sorted(paced))


#: Running trials named in the progress line; more are counted ("+3").
MAX_RUNNING_SHOWN = 8


def format_progress(p: Progress, n_slots: int, started: float | None = None, now: float | None = None) -> str:
    """The progress line: counts, elapsed time, each running trial's epoch (``k/N``, grid-key
    order) and the expected time left (:func:`time_left`, ``n_slots`` workers or the running
    trials, whichever is more)."""
    now = time.time() if now is None else now
    total = len(p.points)
    done, run, wait, fail = p.count("done"), p.count("running"), p.count("waiting"), p.count("failed")
    missing = p.count("missing")
    epochs = ""
    running = p.running_trials()
    if running:
        shown = ", ".join(format_epoch(t) for t in running[:MAX_RUNNING_SHOWN])
        more = f" +{len(running) - MAX_RUNNING_SHOWN}" if len(running) > MAX_RUNNING_SHOWN else ""
        epochs = f" | epochs {shown}{more}"
    eta = ""
    if run + wait + missing:
        left = time_left(p, n_slots, now)
        if left.seconds is None:
            eta = " | time left unknown (no finished trial yet)"
        else:
            eta = (f" | time left ~{_fmt_s(left.seconds)} ({datetime.fromtimestamp(now + left.seconds):%H:%M}) "
                   f"at {left.workers} worker(s)")
    el = f" | elapsed {_fmt_s(now - started)}" if started else ""
    return f"[sweep] {done}/{total} done, {run} running, {wait + missing} waiting, {fail} failed{el}{epochs}{eta}"


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
