"""The sweep driver: ``odconv-sweep run sweeps/<x>.yaml`` (``make ablation SWEEP=x``).

1. validates the sweep, writes ``results/<sweep>/sweep.json`` (the resolved definition);
2. opens the storage and creates the study once (before any worker starts);
3. optional tuning stage (``tune:`` in the YAML, see :mod:`sweeps.running.tune`);
4. enqueues every grid point not yet in the study (a re-run enqueues nothing new);
5. settles trials left RUNNING by dead workers (a finished record on disk is reported, any
   other trial is re-queued and resumes from its checkpoint);
6. starts one worker process per slot -- a GPU (or ``DEVICES_PER_TRIAL`` GPUs for DDP
   trials) when GPUs are visible, else ``WORKERS`` CPU workers -- each pinned with
   ``CUDA_VISIBLE_DEVICES`` in its environment before Python starts; shows progress;
7. when the workers are done, re-spawns them if retries were queued meanwhile, then
   aggregates ``results/<sweep>/summary.{csv,md}``, the per-attention table and plots.

With ``--launcher slurm`` (:func:`submit_sweep`) steps 1-5 run here (the login node), then
step 6 is n SLURM jobs, each running one worker; the command returns once they are submitted
(``odconv-sweep status`` follows them; ``odconv-sweep results`` does step 7).

Every storage call rides through an outage of up to ``outage_limit_s`` (see
:mod:`sweeps.running.storage`), in the driver and, passed on their command line, in its workers
and their trials; progress lines are skipped meanwhile.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml
from optuna.trial import TrialState

from lightning_modules.contract import (
    EXIT_BAD_INPUT,
    EXIT_DRAINED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_STORAGE,
    write_json_atomic,
)

from ..analysis_plan import record_plan
from ..definition import SweepDef
from ..layout import DEFAULT_ROOT, SweepLayout
from ..record import JSON_STYLE
from ..slurm_options import SlurmOptions
from .grid_queue import enqueue_grid, requeue_failed
from .liveness import HEARTBEAT_INTERVAL_S, reap
from .process import Slot, StopRequest, WorkerSettings, plan_slots, run_workers, worker_command
from .slurm import submit_jobs
from .storage import DEFAULT_OUTAGE_LIMIT_S, OutageGuard, StorageUnavailable, make_storage, storage_label
from .study import SweepStudy, clear_drain, create_study, drain_requested, format_progress, progress
from .tune import run_tuning

log = logging.getLogger("sweeps")


class ProgressDisplay:
    """Progress lines of a running sweep: one per finished trial, and the counts (rewritten in
    place on a terminal, else printed when they change or every minute)."""

    def __init__(self, study: SweepStudy, keys: list[str], n_slots: int, interval: float = 5.0, stream=None,
                 variants: dict[str, str] | None = None):
        self.study, self.keys, self.n_slots, self.interval = study, keys, n_slots, interval
        self.variants = variants or {}
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.time()
        self.last_line = ""
        self.last_print = 0.0
        self.seen_done: set[int] = set()

    def update(self, force: bool = False) -> None:
        try:
            with self.study.storage.guard.no_wait():  # a progress line is not worth waiting for
                p = progress(self.study, self.keys, self.variants)
        except StorageUnavailable:
            return
        for t in p.completed_trials:
            finished = t.datetime_complete
            if t.number not in self.seen_done and finished and finished.timestamp() >= self.started - 1:
                self.seen_done.add(t.number)
                self._emit(f"  done: {t.user_attrs.get('variant')} seed={t.user_attrs.get('seed')} "
                           f"value={t.value:.4f} ({(finished - t.datetime_start).total_seconds():.0f} s)",
                           newline=True)
        line = format_progress(p, self.n_slots, self.started)
        state = line.split(" | ")[0]
        if self.tty or force or state != self.last_line or time.time() - self.last_print > 60:
            self._emit(line, newline=not self.tty or force)
            self.last_line = state
            self.last_print = time.time()

    def _emit(self, text: str, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _prepare_data(sweep: SweepDef, layout: SweepLayout) -> bool:
    """Fetch/cache the dataset once (first grid point's config) before any worker starts.
    Skipped for synthetic data (made in memory by each trial)."""
    first = sweep.points()[0].params
    try:
        base = yaml.safe_load(Path(sweep.base_config).read_text()) or {}
        cls = str({**sweep.overrides, **first}.get("data.class_path") or (base.get("data") or {}).get("class_path", ""))
        if "synthetic" in cls.lower():
            return True
    except (OSError, ValueError, AttributeError):
        pass
    spec = layout.prepare_spec
    write_json_atomic(spec, {"base_config": sweep.base_config, "overrides": {**sweep.overrides, **first}}, **JSON_STYLE)
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-m", "sweeps", "_prepare", str(spec)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        print(f"[sweep] preparing the data failed (exit {r.returncode}); no trial was started:\n{tail}",
              file=sys.stderr)
        return False
    return True


#: The study sized for a CPU that the no-GPU warning points to.
CPU_STUDY = "sweeps/cifar10_factorial.yaml"
#: Accelerators that train on a GPU when one is visible (Lightning's default is ``auto``).
GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def point_settings(sweep: SweepDef, key: str, default: object = None) -> list[object]:
    """The value of the dotted config ``key`` (``trainer.max_epochs``) at every grid point: the
    point's params, else the sweep's overrides, else the base config, else ``default``."""
    try:
        base = yaml.safe_load(Path(sweep.base_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        base = {}
    value: object = base
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    value = sweep.overrides.get(key, value)
    return [p.params.get(key, value if value is not None else default) for p in sweep.points()]


def cpu_scale_warning(sweep: SweepDef, slots: list[Slot]) -> str | None:
    """One line before a sweep meant for GPUs starts on a machine where no CUDA device is
    visible (every slot a CPU slot, and the trainer's accelerator ``auto``/``gpu``/``cuda``):
    its scale (points, epochs, the device found) and where to look first. None otherwise."""
    if any(s.devices for s in slots):
        return None
    accelerators = sorted({str(a).lower() for a in point_settings(sweep, "trainer.accelerator", "auto")})
    if not set(accelerators) & set(GPU_ACCELERATORS):
        return None
    epochs = [e for e in point_settings(sweep, "trainer.max_epochs") if isinstance(e, int) and e > 0]
    per_point = ("?" if not epochs else str(epochs[0]) if min(epochs) == max(epochs)
                 else f"{min(epochs)}-{max(epochs)}")
    total = f" = {sum(epochs)} epochs" if epochs and len(epochs) == len(sweep.points()) else ""
    stem = Path(sweep.source).stem if getattr(sweep, "source", None) else sweep.name
    fails = " (its trials will fail: they ask for a GPU)" if set(accelerators) & {"gpu", "cuda"} else ""
    threads = slots[0].threads if slots else None
    return (f"[sweep] no CUDA device visible: sweep {sweep.name!r} is {len(sweep.points())} grid points x "
            f"{per_point} epochs{total} with trainer.accelerator {'/'.join(accelerators)}, here on the CPU "
            f"({len(slots)} worker(s){f' x {threads} threads' if threads else ''}){fails}; its expected wall time: "
            f"make estimate SWEEP={stem}; a study sized for a CPU: {CPU_STUDY} (make ablation SWEEP="
            f"{Path(CPU_STUDY).stem})")


def study_name_for(sweep: SweepDef, override: str | None = None) -> str:
    return override or os.environ.get("STUDY") or sweep.name


INTERRUPTED = ("[sweep] interrupted; run the same command again to resume (finished trials are kept, "
               "interrupted ones resume from their last checkpoint)")
DRAINED = ("[sweep] drained (odconv-sweep drain): the running trials finished and no new one was started; "
           "run the same command again to go on")


def open_sweep_study(sweep: SweepDef, settings: WorkerSettings, guard: OutageGuard) -> SweepStudy:
    """Steps 1-2: the sweep's snapshot written, its study created (or opened) with no drain
    request (running the sweep again is asking it to go on)."""
    layout = SweepLayout(sweep.name, settings.results_root)
    layout.dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.snapshot, sweep.to_dict(), **JSON_STYLE)
    record_plan(layout, sweep.analysis)  # before any trial of this run starts
    study = create_study(make_storage(settings.storage_url, sweep.name, settings.results_root, guard),
                         settings.study_name)
    study.set_user_attr("sweep", sweep.name)
    clear_drain(study)
    return study


def fill_queue(study: SweepStudy, sweep: SweepDef, extra: dict | None, retry_failed: bool) -> tuple[int, int]:
    """Steps 4-5: every grid point not yet in the study enqueued (``extra``: the tuned values
    per variant), failed points re-queued with ``retry_failed``, trials of dead workers settled;
    returns (points enqueued, trials settled)."""
    added = enqueue_grid(study, sweep, extra)
    if retry_failed:
        added += requeue_failed(study)
    return added, len(reap(study, sweep))


def run_sweep(sweep: SweepDef, storage_url: str | None = None, workers: int | None = None, gpus: str | None = None,
              devices_per_trial: int = 1, results_root: str = DEFAULT_ROOT, study_name: str | None = None,
              retry_failed: bool = False, aggregate_at_end: bool = True, progress_interval: float = 5.0,
              max_rounds: int = 20, prepare_data: bool = True, outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S,
              heartbeat_s: float = HEARTBEAT_INTERVAL_S) -> int:
    """Run (or resume) a sweep to completion. Returns 0 when every grid point is done, 1 when
    some failed, 2 when its data could not be prepared, 3 when the storage was unreachable
    for longer than ``outage_limit_s`` (here or in a worker), 4 when drained with points left
    (``odconv-sweep drain``), 130 when interrupted. ``heartbeat_s``: how often a worker beats
    its running trial's heartbeat. ``ValueError`` for impossible worker/GPU requests."""
    slots = plan_slots(gpus, workers, devices_per_trial)
    warning = cpu_scale_warning(sweep, slots)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    settings = WorkerSettings(study_name_for(sweep, study_name), results_root, storage_url, devices_per_trial,
                              outage_limit_s, heartbeat_s)
    with StopRequest() as stop:
        guard = OutageGuard(storage_label(storage_url, sweep.name, results_root), limit_s=outage_limit_s,
                            should_stop=stop)
        driver = Driver(sweep, settings, slots, stop, guard, progress_interval)
        try:
            return driver.run(retry_failed, aggregate_at_end, max_rounds, prepare_data)
        except StorageUnavailable as e:
            if stop.requested:
                print(INTERRUPTED, file=sys.stderr)
                return EXIT_STOPPED
            print(f"[sweep] stopped: {e}. Finished trials are kept (records on disk); run the same command "
                  f"again once the storage is reachable to resume.", file=sys.stderr)
            return EXIT_STORAGE


@dataclass
class Driver:
    """The driver of one ``odconv-sweep run`` on this machine: its workers (one per slot, started
    with ``settings``), the stop request (Ctrl-C) and its storage's outage guard."""

    sweep: SweepDef
    settings: WorkerSettings
    slots: list[Slot]
    stop: StopRequest
    guard: OutageGuard
    progress_interval: float = 5.0

    @property
    def layout(self) -> SweepLayout:
        return SweepLayout(self.sweep.name, self.settings.results_root)

    def run(self, retry_failed: bool, aggregate_at_end: bool, max_rounds: int, prepare_data: bool) -> int:
        sweep, stop = self.sweep, self.stop
        study = open_sweep_study(sweep, self.settings, self.guard)
        self._log_start()
        if prepare_data and not _prepare_data(sweep, self.layout):
            return EXIT_STOPPED if stop.requested else EXIT_BAD_INPUT
        extra = None
        if sweep.tune is not None:
            extra = run_tuning(sweep, study.storage, self.settings, self.slots, self.layout.snapshot, stop)
            if extra is None:
                if not stop.requested and drain_requested(study):
                    print(DRAINED, file=sys.stderr)
                    return EXIT_DRAINED
                print(INTERRUPTED, file=sys.stderr)
                return EXIT_STOPPED
            write_json_atomic(self.layout.tuned, extra, **JSON_STYLE)
        added, reaped = fill_queue(study, sweep, extra, retry_failed)
        log.info("enqueued %d new grid point(s); settled %d trial(s) of dead workers", added, reaped)
        display = ProgressDisplay(study, [p.key for p in sweep.points()], len(self.slots), self.progress_interval,
                                  variants={p.key: p.variant for p in sweep.points()})
        drained = self.run_grid(study, display, max_rounds)
        return self.finish(study, display, drained, aggregate_at_end)

    def _log_start(self) -> None:
        sweep, slots = self.sweep, self.slots
        points = sweep.points()
        seeds_per_variant = Counter(p.variant for p in points).values()
        low, high = min(seeds_per_variant, default=0), max(seeds_per_variant, default=0)
        log.info("sweep %s: %d grid points (%d variants, %s point(s) each), storage %s, study %s, %d worker(s): %s",
                 sweep.name, len(points), len(sweep.variants()), low if low == high else f"{low}-{high}",
                 self.guard.label, self.settings.study_name, len(slots),
                 ", ".join(f"GPU {s.devices}" if s.devices else f"CPU x{s.threads} threads" for s in slots))

    def run_grid(self, study: SweepStudy, display: ProgressDisplay, max_rounds: int) -> bool:
        """Step 6: workers until no point is waiting or running (re-spawned while retries were
        queued, at most ``max_rounds`` times); True when stopped by a drain request."""
        sweep, stop, guard = self.sweep, self.stop, self.guard
        last_reap = time.monotonic()

        def tick() -> None:
            nonlocal last_reap
            display.update()
            # dead workers elsewhere: their points are re-queued (not while the storage is shaky: a
            # reap that stopped half-way could leave a point failed and not re-queued)
            if time.monotonic() - last_reap > 60 and guard.seconds_since_outage() > 60:
                last_reap = time.monotonic()
                try:
                    reap(study, sweep)
                except StorageUnavailable as e:
                    log.warning("reaping skipped: %s", e)

        rounds = 0
        while not stop.requested:
            if drain_requested(study):
                return True  # this driver's workers finished their trials and claimed no new one
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if rounds >= max_rounds:
                    log.warning("workers were started %d times and points are still queued; giving up", rounds)
                    return False
                rounds += 1
                self._run_workers(study, tick)
                continue
            if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # other machines (or workers of another driver) are still running points: wait for
                # them, so that every machine's command ends with the whole sweep's results
                tick()
                time.sleep(max(2.0, self.progress_interval))
                continue
            return False
        return False

    def _run_workers(self, study: SweepStudy, tick) -> None:
        """One round of workers, one per slot, until each has no trial left to claim."""
        snapshot = self.layout.snapshot
        codes = run_workers(self.slots, lambda slot: worker_command(snapshot, self.settings, slot.index, "grid",
                                                                    slot.threads),
                            self.stop, tick, min(self.progress_interval, 2.0))
        if EXIT_STORAGE in codes and not self.stop.requested:
            raise StorageUnavailable(f"a worker could not reach the storage {self.guard.label} for longer than "
                                     f"{self.guard.limit_s:.0f} s")
        if not self.stop.requested:
            reap(study, self.sweep)  # a worker that was killed left its trial RUNNING

    def finish(self, study: SweepStudy, display: ProgressDisplay, drained: bool, aggregate_at_end: bool) -> int:
        """Step 7: the last progress line, the report, and the exit code."""
        display.update(force=True)
        keys = [p.key for p in self.sweep.points()]
        p = progress(study, keys)
        if aggregate_at_end:
            _aggregate(self.sweep, self.settings.results_root, study)
        print(f"[sweep] dashboard: optuna-dashboard {self.guard.label}", file=sys.stderr)
        if self.stop.requested:
            print(INTERRUPTED, file=sys.stderr)
            return EXIT_STOPPED
        if p.count("done") == len(keys):
            return EXIT_OK
        if drained:
            print(f"{DRAINED}: {p.count('done')}/{len(keys)} points done", file=sys.stderr)
            return EXIT_DRAINED
        return EXIT_ERROR


def _aggregate(sweep: SweepDef, results_root: str, study: SweepStudy) -> None:
    """The report of the finished study (``odconv-sweep results`` redoes it)."""
    try:
        # deferred: the report's stack (pandas, matplotlib) is loaded only when a study is aggregated,
        # and a failure there must not lose the run's outcome
        from ..reporting.aggregate import aggregate
        out = aggregate(sweep.name, results_root, sweep=sweep, study=study)
        print(f"[sweep] results: {out['summary_md']}; {out['isocost_line']}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 (the sweep's trials are done and kept; `results` redoes this)
        log.warning("aggregation failed: %s", e)


MAX_DEFAULT_JOBS = 32  # `--slurm-jobs` default: one job per grid point left, at most this many


def submit_sweep(sweep: SweepDef, options: SlurmOptions, storage_url: str | None = None, n_jobs: int | None = None,
                 devices_per_trial: int = 1, results_root: str = DEFAULT_ROOT, study_name: str | None = None,
                 retry_failed: bool = False, prepare_data: bool = True,
                 outage_limit_s: float = DEFAULT_OUTAGE_LIMIT_S) -> int:
    """Steps 1-5 of the driver here, then `n_jobs` SLURM jobs (default: one per grid point
    left, at most :data:`MAX_DEFAULT_JOBS`) that each run one worker of the grid stage; returns
    once they are submitted: 0 (also when nothing is left to run and every point is done), 1
    when nothing is left but some points failed, 2 when the data could not be prepared.
    ``ValueError`` for what SLURM jobs cannot do (the tuning stage, n_jobs < 1).
    ``outage_limit_s``: how long this command and the jobs' workers wait for an unreachable storage.

    A job with ``gpus_per_job`` GPUs runs one trial at a time on all of them (DDP when more
    than one). The storage must be reachable from the compute nodes (PostgreSQL, or the
    journal file on a filesystem they share with this node)."""
    if sweep.tune is not None:
        raise ValueError(f"sweep {sweep.name!r} has a tuning stage ('tune:'), which runs only with the local "
                         f"launcher; valid: --launcher local, or a sweep without 'tune:'")
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"--slurm-jobs/SLURM_JOBS must be >= 1, got {n_jobs}")
    # the jobs' workers run elsewhere (another working directory): they get absolute paths
    settings = WorkerSettings(study_name_for(sweep, study_name), str(Path(results_root).resolve()), storage_url,
                              options.gpus_per_job or devices_per_trial, outage_limit_s, HEARTBEAT_INTERVAL_S)
    label = storage_label(storage_url, sweep.name, results_root)
    study = open_sweep_study(sweep, settings, OutageGuard(label, limit_s=outage_limit_s))
    layout = SweepLayout(sweep.name, settings.results_root)
    if prepare_data and not _prepare_data(sweep, layout):
        return EXIT_BAD_INPUT
    added, reaped = fill_queue(study, sweep, None, retry_failed)
    keys = [p.key for p in sweep.points()]
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    log.info("sweep %s: %d grid points, storage %s, study %s; enqueued %d new, settled %d of dead workers; "
             "%d waiting", sweep.name, len(keys), label, settings.study_name, added, reaped, waiting)
    if waiting == 0:
        p = progress(study, keys)
        print(f"{format_progress(p, 1)}; nothing left to run, no job submitted", file=sys.stderr)
        return EXIT_OK if p.count("done") == len(keys) else EXIT_ERROR
    n = n_jobs or min(waiting, MAX_DEFAULT_JOBS)
    argv = worker_command(layout.snapshot, settings, 0, "grid")
    ids = submit_jobs(argv, n, options, layout.slurm, job_name=f"sweep-{sweep.name}", cwd=os.getcwd())
    print(f"[sweep] submitted {len(ids)} SLURM worker job(s) for {waiting} waiting trial(s): {' '.join(ids)}\n"
          f"[sweep] their logs: {layout.slurm}/<job id>/; follow with: odconv-sweep status {sweep.name}"
          + (f" --storage {storage_url}" if storage_url else "")
          + f" (or squeue -j {','.join(ids)}); tables when done: odconv-sweep results {sweep.name}",
          file=sys.stderr)
    print(" ".join(ids))
    return EXIT_OK
