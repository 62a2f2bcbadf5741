"""Optuna state of a sweep: storage, the study, the grid queue, reaping dead trials, progress.

Facts this is built on (optuna 5.0): ``GridSampler`` runs duplicate points with parallel
workers, so every grid point is enqueued once (``enqueue_trial(..., skip_if_exists=True)``
with the grid key in ``user_attrs``) and workers pop WAITING trials themselves, running
nothing when the queue is empty (``study.ask()`` would create a fresh, un-gridded trial).
The study is created once by the driver before workers start. RDB storages get a heartbeat
and ``RetryHeartbeatStaleTrialCallback``; the journal storage has no heartbeat, so RUNNING
trials whose worker process is gone are reaped here (pid + process start time on this host,
a user-attribute heartbeat for trials owned by other hosts).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .definition import GridPoint, SweepDef, canonical_value

log = logging.getLogger("sweeps")

HEARTBEAT_INTERVAL_S = 60      # RDB heartbeat and journal user-attr heartbeat
RDB_GRACE_PERIOD_S = 600       # generous: a busy host may miss a few beats
JOURNAL_LOCK_GRACE_S = 60      # a lock file older than this (holder killed) is broken
HOST = socket.gethostname()

try:  # silence the "experimental" warnings of the retry callback and the journal lock
    from optuna.exceptions import ExperimentalWarning
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
except ImportError:  # pragma: no cover
    pass


def results_dir(sweep_name: str, root: str | os.PathLike = "results") -> Path:
    return Path(root) / sweep_name


def is_rdb_url(url: str | None) -> bool:
    return bool(url) and "://" in str(url) and not str(url).startswith("journal://")


def journal_path(sweep_name: str, root: str | os.PathLike = "results", url: str | None = None) -> Path:
    if url:
        u = str(url)
        return Path(u[len("journal://"):] if u.startswith("journal://") else u)
    return results_dir(sweep_name, root) / "optuna.journal"


def rdb_url(url: str) -> str:
    """``postgresql://`` picks a driver that is installed: recent SQLAlchemy defaults to
    psycopg 3, while the suite's extra installs psycopg2-binary."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util
        rest = url.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + rest
        return "postgresql://" + rest
    return url


def make_storage(url: str | None, sweep_name: str, root: str | os.PathLike = "results", max_retries: int = 2,
                 heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """``None``/empty: a journal file under ``results/<sweep>/``; a path or ``journal://path``:
    that journal file; ``postgresql://``/``mysql://``/``sqlite://``: an RDB storage with
    heartbeat and retry of stale trials."""
    if is_rdb_url(url):
        if str(url).startswith("sqlite"):
            warnings.warn("SQLite storage is not for parallel workers (database locks); use the default "
                          "journal file on one machine or PostgreSQL across machines")
        kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}} if not str(url).startswith("sqlite") else {}
        if heartbeat:
            kwargs.update(heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=RDB_GRACE_PERIOD_S,
                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                              max_retry=max_retries))
        return optuna.storages.RDBStorage(rdb_url(str(url)), **kwargs)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = journal_path(sweep_name, root, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def storage_label(url: str | None, sweep_name: str, root: str | os.PathLike = "results") -> str:
    """What to pass to optuna-dashboard for this storage."""
    return rdb_url(str(url)) if is_rdb_url(url) else str(journal_path(sweep_name, root, url))


def create_study(storage, study_name: str) -> optuna.Study:
    return optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)


def load_study(storage, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=storage)


def study_id(study: optuna.Study) -> int:
    return study._storage.get_study_id_from_name(study.study_name)


# --- grid queue --------------------------------------------------------------------------

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


def enqueue_grid(study: optuna.Study, sweep: SweepDef, extra_overrides: dict[str, dict[str, Any]] | None = None) -> int:
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


def pop_waiting(study: optuna.Study) -> optuna.trial.Trial | None:
    """Claim one WAITING trial (atomically, as ``Study.ask`` does) or return None; never creates
    a trial, so a late worker that finds the queue empty runs nothing."""
    storage = study._storage
    sid = study_id(study)
    for t in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        return optuna.trial.Trial(study, t._trial_id)
    return None


def total_retries(t: FrozenTrial) -> int:
    return int(t.user_attrs.get("retries", 0)) + len(t.system_attrs.get("retry_history", []))


def enqueue_retry(study: optuna.Study, t: FrozenTrial, reason: str, max_retries: int, count: bool = True) -> bool:
    """Re-enqueue a trial that died (its run directory, hence its last checkpoint, is keyed by
    the grid point, so the retry resumes). Returns False when the retry budget is spent."""
    retries = total_retries(t) + (1 if count else 0)
    if retries > max_retries:
        log.warning("trial %d (%s) died (%s) and has used its %d retries: left failed", t.number,
                    t.user_attrs.get("grid_key"), reason, max_retries)
        return False
    attrs = {k: v for k, v in t.user_attrs.items() if k in ("grid_key", "grid_params", "variant", "seed", "extra_overrides")}
    attrs.update(retries=retries, retry_of=t.number, retry_reason=reason)
    study.enqueue_trial(encode_params(json.loads(t.user_attrs["grid_params"])), user_attrs=attrs)
    return True


def fail_trial(study: optuna.Study, trial_id: int, reason: str, final: bool) -> bool:
    """RUNNING -> FAIL with a reason; False when another process finished it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial_id, "final_failure", bool(final))
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


# --- liveness and reaping ----------------------------------------------------------------

def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        now = process_start_time(pid)
        if now is not None and now != start:
            return False  # pid reused by another process
        try:  # a zombie is dead for our purpose
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return False
        except (OSError, IndexError):
            pass
    return True


def trial_is_dead(t: FrozenTrial, stale_after_s: float, rdb: bool) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it may be alive."""
    a = t.user_attrs
    host, pid = a.get("worker_host"), a.get("worker_pid")
    # worker attrs copied from an earlier attempt (Optuna's retry callback copies user attrs)
    # are stale until the new owner's claim overwrites them
    start = t.datetime_start.timestamp() if t.datetime_start else None
    claimed = a.get("claimed_at")
    if claimed is None or (start is not None and float(claimed) < start - 5):
        host = pid = None
    if host == HOST and pid is not None:
        if not pid_alive(int(pid), a.get("worker_start")):
            return f"worker process {pid} on {host} is gone"
        return None
    if rdb:
        return None  # other hosts: the RDB heartbeat and fail_stale_trials handle them
    beat = (a.get("heartbeat") if host is not None else None) or start
    if beat is not None and time.time() - float(beat) > stale_after_s:
        return f"no heartbeat from {host or 'an unknown worker'} for {time.time() - float(beat):.0f} s"
    return None


def reap(study: optuna.Study, sweep: SweepDef, rdb: bool) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-enqueue them (up to max_retries).
    On RDB storages also runs Optuna's heartbeat-based ``fail_stale_trials``."""
    reaped = []
    if rdb:
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "grid_key" not in t.user_attrs:
            continue
        why = trial_is_dead(t, sweep.stale_after_s, rdb)
        if why is None:
            continue
        final = total_retries(t) + 1 > sweep.max_retries
        if fail_trial(study, t._trial_id, why, final=final):
            log.warning("reaped trial %d (%s): %s", t.number, t.user_attrs.get("grid_key"), why)
            enqueue_retry(study, t, why, sweep.max_retries)
            reaped.append(t.number)
    return reaped


def requeue_failed(study: optuna.Study) -> int:
    """Re-enqueue grid points whose every trial failed (``--retry-failed``)."""
    prog = progress(study)
    n = 0
    for key, st in prog.points.items():
        if st == "failed":
            t = prog.last_trial[key]
            attrs = {k: v for k, v in t.user_attrs.items() if k in ("grid_key", "grid_params", "variant", "seed", "extra_overrides")}
            attrs.update(retries=0, retry_of=t.number, retry_reason="--retry-failed")
            study.enqueue_trial(encode_params(json.loads(t.user_attrs["grid_params"])), user_attrs=attrs)
            n += 1
    return n


# --- progress ----------------------------------------------------------------------------

@dataclass
class Progress:
    points: dict[str, str] = field(default_factory=dict)          # grid key -> done|running|waiting|failed
    last_trial: dict[str, FrozenTrial] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)          # seconds of completed trials
    completed_trials: list[FrozenTrial] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for s in self.points.values() if s == state)


_RANK = {"done": 4, "running": 3, "waiting": 2, "failed": 1}


def progress(study: optuna.Study, expected_keys: list[str] | None = None) -> Progress:
    p = Progress()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("grid_key")
        if key is None:
            continue
        st = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}.get(t.state, "failed")
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


def format_progress(p: Progress, n_slots: int, started: float | None = None) -> str:
    total = len(p.points)
    done, run, wait, fail = p.count("done"), p.count("running"), p.count("waiting"), p.count("failed")
    missing = p.count("missing")
    eta = ""
    remaining = run + wait + missing
    if p.durations and remaining:
        per = sorted(p.durations)[len(p.durations) // 2]
        secs = per * remaining / max(1, n_slots)
        eta = f" | ETA {_fmt_s(secs)} ({datetime.fromtimestamp(time.time() + secs):%H:%M})"
    el = f" | elapsed {_fmt_s(time.time() - started)}" if started else ""
    return (f"[sweep] {done}/{total} done, {run} running, {wait + missing} waiting, {fail} failed{el}{eta}")


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
