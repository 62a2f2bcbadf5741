"""Liveness of a sweep's running trials, and reaping those whose worker is gone.

One mechanism for every storage: a worker writes its host, pid and process start time into
the trial it claims and beats a ``heartbeat`` user attribute (every
:data:`HEARTBEAT_INTERVAL_S`); a RUNNING trial whose worker process is gone (same host) or
whose heartbeat is older than the sweep's ``stale_after_s`` (other hosts) is settled: told
its result when its final record is on disk, else failed and re-enqueued
(:func:`sweeps.running.grid_queue.fail_and_retry`). Optuna's own heartbeat and retry callback
are not used (they would count retries a second time).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..definition import SweepDef
from ..record import TrialRecord, read_record
from .grid_queue import fail_and_retry, report_record
from .study import HOST, SweepStudy

log = logging.getLogger("sweeps")

HEARTBEAT_INTERVAL_S = 60.0   # a worker's default: the heartbeat user attribute of its running trial


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


def trial_is_dead(t: FrozenTrial, stale_after_s: float, storage_quiet_s: float = float("inf")) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it may be alive. ``storage_quiet_s``:
    seconds since the reaper's own last storage outage; heartbeats missed during an outage say
    nothing, so heartbeat ages count only once the storage has been reachable that long."""
    a = t.user_attrs
    host, pid = a.get("worker_host"), a.get("worker_pid")
    # worker attrs copied from an earlier attempt are stale until the new owner's claim overwrites them
    start = t.datetime_start.timestamp() if t.datetime_start else None
    claimed = a.get("claimed_at")
    if claimed is None or (start is not None and float(claimed) < start - 5):
        host = pid = None
    if host == HOST and pid is not None:
        if not pid_alive(int(pid), a.get("worker_start")):
            return f"worker process {pid} on {host} is gone"
        return None
    beat = (a.get("heartbeat") if host is not None else None) or start
    age = time.time() - float(beat) if beat is not None else 0.0
    if age > stale_after_s and storage_quiet_s > stale_after_s:
        return f"no heartbeat from {host or 'an unknown worker'} for {age:.0f} s"
    return None


def finished_record(t: FrozenTrial) -> tuple[TrialRecord, Path] | None:
    """The final record a trial's run wrote on this host (complete, pruned or diverged), when
    its worker died or lost the storage before telling Optuna; else None."""
    path = t.user_attrs.get("record_path")
    if not path or not Path(path).exists():
        return None
    try:
        rec = read_record(path)
    except (OSError, ValueError, TypeError):
        return None
    if rec.trial_number != t.number or (rec.status == "failed" and not (rec.reason or "").startswith("diverged")):
        return None
    return rec, Path(path)


def reap(study: SweepStudy, sweep: SweepDef) -> list[int]:
    """Settle RUNNING grid trials whose worker is gone: a trial whose final record is on disk is
    told its result; any other is failed and re-enqueued (up to ``max_retries``)."""
    reaped = []
    quiet = study.storage.guard.seconds_since_outage()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "grid_key" not in t.user_attrs:
            continue
        why = trial_is_dead(t, sweep.stale_after_s, quiet)
        if why is None:
            continue
        done = finished_record(t)
        try:
            if done is not None:
                state = report_record(study, t.number, done[0], done[1])
                log.warning("trial %d (%s): its worker is gone (%s); reported its finished record: %s", t.number,
                            t.user_attrs.get("grid_key"), why, state)
            elif fail_and_retry(study, t.number, why, sweep.max_retries):
                log.warning("reaped trial %d (%s): %s", t.number, t.user_attrs.get("grid_key"), why)
            else:
                continue
        except UpdateFinishedTrialError:
            continue  # another reaper (or the worker, back from an outage) settled it first
        reaped.append(t.number)
    return reaped

