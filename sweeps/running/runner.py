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

Every storage call rides through an outage of up to ``SWEEP_OUTAGE_LIMIT_S`` (see
:mod:`sweeps.running.storage`); progress lines are skipped meanwhile.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna

from lightning_modules.contract import write_json_atomic

from ..definition import SweepDef
from ..record import JSON_STYLE
from . import study as S
from .process import Slot, StopRequest, plan_slots, run_workers, worker_command  # noqa: F401 (Slot, plan_slots: API)
from .slurm import SlurmOptions, submit_jobs
from .storage import EXIT_STORAGE, OutageGuard, StorageUnavailable

log = logging.getLogger("sweeps")


class ProgressDisplay:
    """Progress lines of a running sweep: one per finished trial, and the counts (rewritten in
    place on a terminal, else printed when they change or every minute)."""

    def __init__(self, study: S.SweepStudy, keys: list[str], n_slots: int, interval: float = 5.0, stream=None,
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
                p = S.progress(self.study, self.keys, self.variants)
        except StorageUnavailable:
            return
        for t in p.completed_trials:
            finished = t.datetime_complete
            if t.number not in self.seen_done and finished and finished.timestamp() >= self.started - 1:
                self.seen_done.add(t.number)
                self._emit(f"  done: {t.user_attrs.get('variant')} seed={t.user_attrs.get('seed')} "
                           f"value={t.value:.4f} ({(finished - t.datetime_start).total_seconds():.0f} s)",
                           newline=True)
        line = S.format_progress(p, self.n_slots, self.started)
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


def _prepare_data(sweep: SweepDef, res: Path) -> bool:
    """Fetch/cache the dataset once (first grid point's config) before any worker starts.
    Skipped for synthetic data (made in memory by each trial)."""
    first = sweep.points()[0].params
    try:
        import yaml
        base = yaml.safe_load(Path(sweep.base_config).read_text()) or {}
        cls = str({**sweep.overrides, **first}.get("data.class_path") or (base.get("data") or {}).get("class_path", ""))
        if "synthetic" in cls.lower():
            return True
    except (OSError, ValueError, AttributeError):
        pass
    spec = res / "runs" / "prepare_spec.json"
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
    import yaml
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


def run_sweep(sweep: SweepDef, storage_url: str | None = None, workers: int | None = None, gpus: str | None = None,
              devices_per_trial: int = 1, results_root: str = "results", study_name: str | None = None,
              retry_failed: bool = False, aggregate_at_end: bool = True, progress_interval: float = 5.0,
              max_rounds: int = 20, prepare_data: bool = True) -> int:
    """Run (or resume) a sweep to completion. Returns 0 when every grid point is done, 1 when
    some failed, 2 when its data could not be prepared, 3 when the storage was unreachable
    for longer than the outage limit, 4 when drained with points left (``odconv-sweep
    drain``), 130 when interrupted. ``ValueError`` for impossible
    worker/GPU requests."""
    slots = plan_slots(gpus, workers, devices_per_trial)
    warning = cpu_scale_warning(sweep, slots)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    label = S.storage_label(storage_url, sweep.name, results_root)
    with StopRequest() as stop:
        try:
            return _run(sweep, storage_url, slots, devices_per_trial, results_root, study_name, retry_failed,
                        aggregate_at_end, progress_interval, max_rounds, prepare_data, stop,
                        OutageGuard(label, should_stop=stop))
        except StorageUnavailable as e:
            if stop.requested:
                print(INTERRUPTED, file=sys.stderr)
                return 130
            print(f"[sweep] stopped: {e}. Finished trials are kept (records on disk); run the same command "
                  f"again once the storage is reachable to resume.", file=sys.stderr)
            return EXIT_STORAGE


INTERRUPTED = ("[sweep] interrupted; run the same command again to resume (finished trials are kept, "
               "interrupted ones resume from their last checkpoint)")
DRAINED = ("[sweep] drained (odconv-sweep drain): the running trials finished and no new one was started; "
           "run the same command again to go on")
EXIT_DRAINED = 4


def _run(sweep: SweepDef, storage_url: str | None, slots: list[Slot], devices_per_trial: int, results_root: str,
         study_name: str | None, retry_failed: bool, aggregate_at_end: bool, progress_interval: float,
         max_rounds: int, prepare_data: bool, stop: StopRequest, guard: OutageGuard) -> int:
    res = S.results_dir(sweep.name, results_root)
    res.mkdir(parents=True, exist_ok=True)
    sweep_json = res / "sweep.json"
    write_json_atomic(sweep_json, sweep.to_dict(), **JSON_STYLE)
    name = study_name_for(sweep, study_name)
    storage = S.make_storage(storage_url, sweep.name, results_root, guard)
    study = S.create_study(storage, name)
    study.set_user_attr("sweep", sweep.name)
    S.clear_drain(study)  # running the sweep again is asking it to go on
    points = sweep.points()
    seeds_per_variant = Counter(p.variant for p in points).values()
    low, high = min(seeds_per_variant, default=0), max(seeds_per_variant, default=0)
    log.info("sweep %s: %d grid points (%d variants, %s point(s) each), storage %s, study %s, %d worker(s): %s",
             sweep.name, len(points), len(sweep.variants()), low if low == high else f"{low}-{high}", guard.label,
             name, len(slots),
             ", ".join(f"GPU {s.devices}" if s.devices else f"CPU x{s.threads} threads" for s in slots))

    if prepare_data and not _prepare_data(sweep, res):
        return 130 if stop.requested else 2

    extra = None
    if sweep.tune is not None:
        from .tune import run_tuning
        extra = run_tuning(sweep, storage, storage_url, name, slots, results_root, sweep_json, devices_per_trial, stop)
        if extra is None:
            if not stop.requested and S.drain_requested(study):
                print(DRAINED, file=sys.stderr)
                return EXIT_DRAINED
            print(INTERRUPTED, file=sys.stderr)
            return 130
        write_json_atomic(res / "tuned.json", extra, **JSON_STYLE)

    added = S.enqueue_grid(study, sweep, extra)
    if retry_failed:
        added += S.requeue_failed(study)
    reaped = S.reap(study, sweep)
    log.info("enqueued %d new grid point(s); settled %d trial(s) of dead workers", added, len(reaped))

    keys = [p.key for p in sweep.points()]
    display = ProgressDisplay(study, keys, len(slots), progress_interval,
                              variants={p.key: p.variant for p in sweep.points()})
    last_reap = time.monotonic()

    def tick() -> None:
        nonlocal last_reap
        display.update()
        # dead workers elsewhere: their points are re-queued (not while the storage is shaky: a
        # reap that stopped half-way could leave a point failed and not re-queued)
        if time.monotonic() - last_reap > 60 and guard.seconds_since_outage() > 60:
            last_reap = time.monotonic()
            try:
                S.reap(study, sweep)
            except StorageUnavailable as e:
                log.warning("reaping skipped: %s", e)

    W, R = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
    rounds = 0
    drained = False
    while not stop.requested:
        if S.drain_requested(study):
            drained = True  # this driver's workers finished their trials and claimed no new one
            break
        if study.get_trials(deepcopy=False, states=(W,)):
            if rounds >= max_rounds:
                log.warning("workers were started %d times and points are still queued; giving up", rounds)
                break
            rounds += 1
            codes = run_workers(slots, lambda slot: worker_command(sweep_json, name, results_root, devices_per_trial,
                                                                   slot.index, "grid", storage_url),
                                stop, tick, min(progress_interval, 2.0))
            if EXIT_STORAGE in codes and not stop.requested:
                raise StorageUnavailable(f"a worker could not reach the storage {guard.label} for longer than "
                                         f"{guard.limit_s:.0f} s")
            if not stop.requested:
                S.reap(study, sweep)  # a worker that was killed left its trial RUNNING
            continue
        if study.get_trials(deepcopy=False, states=(R,)):
            # other machines (or workers of another driver) are still running points: wait for
            # them, so that every machine's command ends with the whole sweep's results
            tick()
            time.sleep(max(2.0, progress_interval))
            continue
        break
    display.update(force=True)
    p = S.progress(study, keys)
    if aggregate_at_end:
        try:
            from ..reporting.aggregate import aggregate
            out = aggregate(sweep.name, results_root, sweep=sweep, study=study)
            print(f"[sweep] results: {out['summary_md']}; {out['isocost_line']}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 (the sweep's trials are done and kept; `results` redoes this)
            log.warning("aggregation failed: %s", e)
    print(f"[sweep] dashboard: optuna-dashboard {guard.label}", file=sys.stderr)
    if stop.requested:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    if p.count("done") == len(keys):
        return 0
    if drained:
        print(f"{DRAINED}: {p.count('done')}/{len(keys)} points done", file=sys.stderr)
        return EXIT_DRAINED
    return 1


MAX_DEFAULT_JOBS = 32  # `--slurm-jobs` default: one job per grid point left, at most this many


def slurm_folder(sweep_name: str, results_root: str = "results") -> Path:
    """Where a sweep's SLURM jobs keep their submitit files (``<job id>/``) and ``jobs.txt``."""
    return S.results_dir(sweep_name, results_root) / "slurm"


def submit_sweep(sweep: SweepDef, options: SlurmOptions, storage_url: str | None = None, n_jobs: int | None = None,
                 devices_per_trial: int = 1, results_root: str = "results", study_name: str | None = None,
                 retry_failed: bool = False, prepare_data: bool = True) -> int:
    """Steps 1-5 of the driver here, then `n_jobs` SLURM jobs (default: one per grid point
    left, at most :data:`MAX_DEFAULT_JOBS`) that each run one worker of the grid stage; returns
    once they are submitted: 0 (also when nothing is left to run and every point is done), 1
    when nothing is left but some points failed, 2 when the data could not be prepared.
    ``ValueError`` for what SLURM jobs cannot do (the tuning stage, n_jobs < 1).

    A job with ``gpus_per_job`` GPUs runs one trial at a time on all of them (DDP when more
    than one). The storage must be reachable from the compute nodes (PostgreSQL, or the
    journal file on a filesystem they share with this node)."""
    if sweep.tune is not None:
        raise ValueError(f"sweep {sweep.name!r} has a tuning stage ('tune:'), which runs only with the local "
                         f"launcher; valid: --launcher local, or a sweep without 'tune:'")
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"--slurm-jobs/SLURM_JOBS must be >= 1, got {n_jobs}")
    per_trial = options.gpus_per_job or devices_per_trial
    res = S.results_dir(sweep.name, results_root).resolve()
    res.mkdir(parents=True, exist_ok=True)
    sweep_json = res / "sweep.json"
    write_json_atomic(sweep_json, sweep.to_dict(), **JSON_STYLE)
    name = study_name_for(sweep, study_name)
    label = S.storage_label(storage_url, sweep.name, results_root)
    study = S.create_study(S.make_storage(storage_url, sweep.name, results_root, OutageGuard(label)), name)
    study.set_user_attr("sweep", sweep.name)
    S.clear_drain(study)
    if prepare_data and not _prepare_data(sweep, res):
        return 2
    added = S.enqueue_grid(study, sweep)
    if retry_failed:
        added += S.requeue_failed(study)
    reaped = S.reap(study, sweep)
    keys = [p.key for p in sweep.points()]
    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    log.info("sweep %s: %d grid points, storage %s, study %s; enqueued %d new, settled %d of dead workers; "
             "%d waiting", sweep.name, len(keys), label, name, added, len(reaped), waiting)
    if waiting == 0:
        p = S.progress(study, keys)
        print(f"{S.format_progress(p, 1)}; nothing left to run, no job submitted", file=sys.stderr)
        return 0 if p.count("done") == len(keys) else 1
    n = n_jobs or min(waiting, MAX_DEFAULT_JOBS)
    argv = worker_command(sweep_json, name, str(Path(results_root).resolve()), per_trial, 0, "grid", storage_url)
    folder = slurm_folder(sweep.name, results_root)
    ids = submit_jobs(argv, n, options, folder, job_name=f"sweep-{sweep.name}", cwd=os.getcwd())
    print(f"[sweep] submitted {len(ids)} SLURM worker job(s) for {waiting} waiting trial(s): {' '.join(ids)}\n"
          f"[sweep] their logs: {folder}/<job id>/; follow with: odconv-sweep status {sweep.name}"
          + (f" --storage {storage_url}" if storage_url else "")
          + f" (or squeue -j {','.join(ids)}); tables when done: odconv-sweep results {sweep.name}",
          file=sys.stderr)
    print(" ".join(ids))
    return 0
