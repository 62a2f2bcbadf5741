"""A sweep worker: ``python -m sweeps _worker <args>``, started by the driver with its devices
already pinned (``CUDA_VISIBLE_DEVICES`` in its environment before Python starts).

One loop for both stages: claim a trial from its source -- the grid queue
(:class:`GridSource`) or the tuning studies (:class:`sweeps.running.tune.TuneSource`) -- run it in a
child process (``python -m sweeps _trial``) while beating its heartbeat (each beat also
copies the fit's epoch from ``<run_dir>/progress.json`` into the trial's ``progress`` user
attribute, for ``odconv-sweep status``), then tell Optuna the outcome its record says. Stops
when the source has nothing left (running nothing), when the study is drained
(``odconv-sweep drain``: before claiming the next trial), or on SIGINT/SIGTERM (the running
trial is failed as "interrupted"; a grid point is re-queued without using up a retry and
resumes from its checkpoint).

In a SLURM worker job (``odconv-sweep run --launcher slurm``) the job's warning signal
(:func:`sweeps.running.slurm.stop_signal`) does the same, except that the trial process got that
signal from SLURM itself and stops after its running step with a checkpoint at that step;
the job is then requeued and its next run resumes the trial.

The storage may be away for a while (:mod:`sweeps.running.storage`): a trial trains on regardless, its
record is written to disk before the worker reports it, and the report waits for the storage to
come back. Only an outage longer than the limit (``--outage-limit``) stops the worker (exit code
3), leaving the trial RUNNING; the next run reports it from its record on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from lightning_modules.contract import EXIT_OK, EXIT_STOPPED, EXIT_STORAGE, read_progress

from ..definition import SweepDef
from ..grid import GridPoint
from ..layout import DEFAULT_ROOT, SweepLayout
from ..record import TrialRecord, read_record, write_record
from .grid_queue import fail_and_retry, fail_trial, pop_waiting, report_record, total_retries
from .liveness import HEARTBEAT_INTERVAL_S, process_start_time, reap
from .process import WorkerSettings, popen_child
from .slurm import current_job, stop_signal
from .storage import DEFAULT_OUTAGE_LIMIT_S, OutageGuard, StorageUnavailable, make_storage, storage_label
from .study import HOST, PROGRESS_ATTR, Claim, SweepStudy, drain_requested, load_study
from .trial_spec import build_cli_args, git_commit, trial_overrides
from .tune import TuneSource

log = logging.getLogger("sweeps")
WARNING_RESEND_S = 3.0


def beat_progress(study: SweepStudy, trial_id: int, run_dir: Path | None,
                  reported: dict[str, Any] | None) -> dict[str, Any] | None:
    """Copy the epoch progress of the fit in ``run_dir`` (:func:`lightning_modules.contract.read_progress`)
    into the trial's :data:`sweeps.running.study.PROGRESS_ATTR` attribute (Optuna's public storage
    API) when it differs from ``reported``, the progress written last; returns the progress now written."""
    prog = read_progress(run_dir) if run_dir is not None else None
    if prog is None:
        return reported
    value = {"epoch": prog.epoch, "max_epochs": prog.max_epochs, "start_epoch": prog.start_epoch}
    if value != reported and study.storage.try_set_trial_user_attr(trial_id, PROGRESS_ATTR, value):
        return value
    return reported


class TrialSource(Protocol):
    def claim(self, worker: "Worker") -> Claim | None:
        """Settle dead trials, then claim the next trial to run, or None when there is none."""


class GridSource:
    """The grid queue: WAITING trials enqueued by the driver, one per grid point (and retries)."""

    def claim(self, worker: "Worker") -> Claim | None:
        reap(worker.study, worker.sweep)
        if worker.stop or drain_requested(worker.study):
            return None
        trial = pop_waiting(worker.study)
        if trial is None:
            return None
        attrs = worker.mark_claimed(trial)
        point = GridPoint(json.loads(attrs["grid_params"]))
        # The point stays in the trial's user attrs (grid_params, visible in the dashboard), not in
        # Optuna params: Optuna keeps one value space per param name for the life of a study, so
        # a grid that gains a value (a new variant) could no longer register its new trials.
        layout = SweepLayout(worker.sweep.name, worker.results_root)
        run_dir = layout.run_dir(point.slug)
        overrides = trial_overrides(worker.sweep, worker.devices_per_trial,
                                    json.loads(attrs.get("extra_overrides") or "{}"), point.params)
        spec = {"sweep": worker.sweep.name, "grid_key": point.key, "variant": point.variant, "params": point.params,
                "seed": point.seed, "attempt": int(attrs.get("retries", 0)), "trial_number": trial.number,
                "run_dir": str(run_dir), "record_path": str(layout.record(point.slug)),
                "cli_args": build_cli_args(worker.sweep.base_config, overrides, run_dir),
                "measure": worker.sweep.measure, "metric": worker.sweep.metric, "git_commit": git_commit(),
                "analysis_plan": worker.sweep.plan_hash,
                "results_root": worker.results_root}
        return Claim(worker.study, trial, spec, requeue=True)


class Worker:
    """Runs the trials of one source (``stage``: grid | tune) one at a time. ``threads``: torch
    threads of its trials (None: torch's default); the heartbeat interval and the outage limit
    (its own and its trials') come with ``settings``."""

    def __init__(self, sweep: SweepDef, settings: WorkerSettings, worker_index: int = 0, stage: str = "grid",
                 threads: int | None = None):
        self.stop = False
        self._first_signal = 0.0
        self.child: Any = None  # the running trial process
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.warned = False  # SLURM's warning signal came
        self.stop_signal = stop_signal()
        if self.stop_signal is not None:
            signal.signal(self.stop_signal, self._on_stop_signal)
        self.job = current_job()
        self.sweep = sweep
        self.storage_url = settings.storage_url
        self.results_root = settings.results_root
        self.study_name = settings.study_name
        self.devices_per_trial = settings.devices_per_trial
        self.heartbeat_s = settings.heartbeat_s
        self.threads = threads
        self.worker_index = worker_index
        self.pid = os.getpid()
        self.start = process_start_time(self.pid)
        self.guard = OutageGuard(storage_label(self.storage_url, sweep.name, self.results_root),
                                 limit_s=settings.outage_limit_s, should_stop=lambda: self.stop)
        self.storage = make_storage(self.storage_url, sweep.name, self.results_root, self.guard)
        self.study = load_study(self.storage, self.study_name)
        if stage == "tune":
            self.source: TrialSource = TuneSource(sweep, self.storage, self.study_name)
        else:
            self.source = GridSource()

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop after the running trial, passing SIGINT on to it (Lightning shuts
        down gracefully). Second signal: kill the trial. Never raises inside storage writes."""
        now = time.time()
        first = not self.stop
        if not first and now - self._first_signal < 3.0:
            return  # the same Ctrl-C reaching us twice (process group + driver)
        self._first_signal = now if first else self._first_signal
        self.stop = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signal.SIGINT if first else signal.SIGKILL)
            except OSError:
                pass

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        """SLURM's warning signal: stop after the running trial, which stops at its next step
        with a checkpoint. It is passed on in case it was sent to this process alone (the
        trial's handler only notes it, so getting it twice is harmless)."""
        self.stop = True
        self.warned = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except OSError:
                pass

    def run(self) -> int:
        """Run trials until the source has none left; :data:`EXIT_OK`, :data:`EXIT_STOPPED` (by a
        signal) or :data:`EXIT_STORAGE` (the storage was unreachable for longer than the limit)."""
        try:
            while not self.stop:
                claim = self.source.claim(self)
                if claim is None:
                    break
                try:
                    self.run_claim(claim)
                except StorageUnavailable:
                    raise
                except UpdateFinishedTrialError:
                    # settled meanwhile by a reaper that judged this worker dead (e.g. its heartbeat
                    # stopped for longer than stale_after_s): the reaper's outcome stands
                    log.warning("trial %d was settled by another process while it ran; its outcome there stands",
                                claim.trial.number)
                except Exception as e:  # noqa: BLE001 (the worker's own failure: fail + retry the trial, go on)
                    log.exception("worker error on trial %d", claim.trial.number)
                    self._fail(claim, f"worker error: {e!r}")
        except StorageUnavailable as e:
            if self.stop:
                return EXIT_STOPPED
            log.error("%s; stopping this worker (its trial's record, if any, is on disk and is reported when "
                      "the sweep is run again)", e)
            return EXIT_STORAGE
        return EXIT_STOPPED if self.stop else EXIT_OK

    # -- one trial ------------------------------------------------------------------------

    def mark_claimed(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """Write this worker's identity into ``trial``; returns its user attributes."""
        # claimed_at last: until it is set, the reaper ignores worker attrs (they may be an old owner's)
        for k, v in {"worker_host": HOST, "worker_pid": self.pid, "worker_start": self.start,
                     "heartbeat": time.time(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu",
                     "worker_index": self.worker_index,
                     **({"slurm_job_id": self.job.job_id, "slurm_node": self.job.node} if self.job else {}),
                     "claimed_at": time.time()}.items():
            trial.set_user_attr(k, v)
        return dict(trial.user_attrs)

    def _heartbeat_loop(self, study: SweepStudy, trial_id: int, done: threading.Event,
                        progress_path: Path | None = None) -> None:
        """Beat the trial's ``heartbeat`` attribute; with each beat, copy the trial's epoch
        progress (``progress_path``, written by the fit's ``EpochProgress``) into its
        :data:`sweeps.running.study.PROGRESS_ATTR` attribute when it changed (every
        ``heartbeat_s`` seconds)."""
        reported: dict[str, Any] | None = None
        while not done.wait(self.heartbeat_s):
            # one attempt per beat: during an outage the beat is skipped (the guard logs the outage once)
            try:
                if not study.storage.try_set_trial_user_attr(trial_id, "heartbeat", time.time()):
                    continue
                reported = beat_progress(study, trial_id, progress_path, reported)
            except Exception as e:  # noqa: BLE001 (e.g. the trial was settled by a reaper: the report says so)
                log.warning("heartbeat stopped (trial id %d): %r", trial_id, e)
                return

    def run_child(self, claim: Claim) -> tuple[int, TrialRecord | None]:
        """Run ``python -m sweeps _trial`` for the claim's spec while beating the trial's
        heartbeat; returns (exit code, the record it wrote or None). The spec gets this
        worker's settings for its trials: their torch threads and the outage limit."""
        spec = {**claim.spec, "threads": self.threads, "outage_limit_s": self.guard.limit_s}
        trial = claim.trial
        run_dir = Path(spec["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / "trial_spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        record_path = Path(spec["record_path"])
        if record_path.exists():  # a stale record of an earlier, failed attempt
            record_path.unlink()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("record_path", str(record_path))
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        done = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, daemon=True,
                              args=(claim.study, claim.study.trial_id(trial.number), done, run_dir))
        try:
            self.child = popen_child([sys.executable, "-m", "sweeps", "_trial", str(spec_path)], env,
                                     run_dir / "train.log",
                                     ignore=(self.stop_signal,) if self.stop_signal is not None else ())
            hb.start()
            try:
                trial.set_user_attr("trial_pid", self.child.pid)
            except StorageUnavailable:
                pass  # the storage is away: the trial trains on; the outcome is reported when it is back
            rc = self._wait_child()
        finally:
            done.set()
            self.child = None
        rec = None
        if record_path.exists():
            try:
                rec = read_record(record_path)
            except Exception as e:  # noqa: BLE001
                log.warning("unreadable record %s: %s", record_path, e)
        return rc, rec

    def _wait_child(self) -> int:
        """Wait for the trial process. After SLURM's warning signal, pass it on every few
        seconds: a trial still starting up ignores it until its own handler is installed."""
        while True:
            try:
                return self.child.wait(timeout=WARNING_RESEND_S)
            except subprocess.TimeoutExpired:
                if self.warned:
                    try:
                        self.child.send_signal(self.stop_signal)
                    except OSError:
                        pass

    def run_claim(self, claim: Claim) -> str:
        """Run a claimed trial and tell Optuna its outcome; returns the outcome."""
        spec, trial = claim.spec, claim.trial
        log.info("trial %d: %s (attempt %d) -> %s", trial.number, spec["grid_key"], spec["attempt"], spec["run_dir"])
        rc, rec = self.run_child(claim)
        record_path = Path(spec["record_path"])
        if rc == 0 and rec is not None:
            state = report_record(claim.study, trial.number, rec, record_path)
            if state == "complete":
                log.info("trial %d complete: %s = %.4f", trial.number, rec.metric, rec.value)
            elif state == "failed":
                log.warning("trial %d failed: %s", trial.number, rec.reason)
            return state
        if self.stop:
            # interrupted: a grid point is re-queued without using up a retry; it resumes from its checkpoint
            if claim.requeue:
                fail_and_retry(claim.study, trial.number, "interrupted", self.sweep.max_retries, count=False)
                log.warning("trial %d interrupted; it resumes from its last checkpoint when the sweep (or its SLURM "
                            "job) runs again",
                            trial.number)
            else:
                fail_trial(claim.study, trial.number, "interrupted", final=True)
            return "interrupted"
        reason = f"trial process exited with {rc}" + (f" (signal {-rc})" if rc < 0 else "") + \
            f"; see {Path(spec['run_dir']) / 'train.log'}"
        if rec is not None and rec.reason:
            reason += f": {rec.reason}"
        final = self._fail(claim, reason)
        if final and rec is None:
            write_record(record_path, TrialRecord(
                sweep=self.sweep.name, grid_key=spec["grid_key"], variant=spec["variant"], params=spec["params"],
                seed=spec["seed"], status="failed", reason=reason, attempt=spec["attempt"], trial_number=trial.number,
                host=HOST, cli_args=spec["cli_args"], git_commit=spec.get("git_commit")))
        log.warning("trial %d failed: %s", trial.number, reason)
        return "failed"

    def _fail(self, claim: Claim, reason: str) -> bool:
        """Fail the claimed trial (a grid point is retried while its budget lasts); True when
        this was its final attempt."""
        number = claim.trial.number
        if not claim.requeue:
            fail_trial(claim.study, number, reason, final=True)
            return True
        frozen = claim.study.storage.get_trial(claim.study.trial_id(number))
        final = total_retries(frozen) + 1 > self.sweep.max_retries
        fail_and_retry(claim.study, number, reason, self.sweep.max_retries)
        return final


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sweeps _worker")
    ap.add_argument("sweep_json")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--study", required=True)
    ap.add_argument("--results-root", default=DEFAULT_ROOT)
    ap.add_argument("--devices-per-trial", type=int, default=1)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--stage", choices=("grid", "tune"), default="grid")
    ap.add_argument("--outage-limit", type=float, default=DEFAULT_OUTAGE_LIMIT_S,
                    help="seconds to wait for an unreachable storage (this worker and its trials)")
    ap.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL_S,
                    help="seconds between heartbeats of the running trial")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each trial (default: torch's)")
    return ap


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    job = current_job()
    threads = a.threads
    if job is not None and threads is None:
        # a SLURM job's trials use the CPUs it was given (torch would take every core of the node);
        # OpenMP/MKL read theirs from the environment when the trial process starts
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    name = f"worker {a.index}" if job is None else f"worker, SLURM job {job.job_id} on {job.node}"
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = SweepDef.from_dict(json.loads(Path(a.sweep_json).read_text()))
    settings = WorkerSettings(a.study, a.results_root, a.storage or None, a.devices_per_trial, a.outage_limit,
                              a.heartbeat)
    try:
        w = Worker(sweep, settings, a.index, a.stage, threads)
    except StorageUnavailable as e:
        log.error("%s; not started", e)
        return EXIT_STORAGE
    return w.run()
