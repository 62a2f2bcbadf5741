"""The sweep driver: ``odconv-sweep run sweeps/<x>.yaml`` (``make ablation SWEEP=x``).

1. validates the sweep, writes ``results/<sweep>/sweep.json`` (the resolved definition);
2. opens the storage and creates the study once (before any worker starts);
3. optional tuning stage (``tune:`` in the YAML, see :mod:`sweeps.tune`);
4. enqueues every grid point not yet in the study (a re-run enqueues nothing new);
5. reaps trials left RUNNING by dead workers of this host (re-queued, resume from checkpoint);
6. starts one worker process per slot -- a GPU (or ``DEVICES_PER_TRIAL`` GPUs for DDP
   trials) when GPUs are visible, else ``WORKERS`` CPU workers -- each pinned with
   ``CUDA_VISIBLE_DEVICES`` in its environment before Python starts; shows progress;
7. when the workers are done, re-spawns them if retries were queued meanwhile, then
   aggregates ``results/<sweep>/summary.{csv,md}``, the per-attention table and plots.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from . import study as S
from .definition import SweepDef
from .record import write_json_atomic
from .worker import popen_child

log = logging.getLogger("sweeps")


@dataclass
class Slot:
    index: int
    devices: str | None   # CUDA_VISIBLE_DEVICES for the worker; "" = CPU only
    threads: int | None


def visible_gpus() -> list[str]:
    """GPU ids visible to this process, without initialising CUDA here."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0:
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return []


def plan_slots(gpus: str | None = None, workers: int | None = None, devices_per_trial: int = 1,
               cpus: int | None = None) -> list[Slot]:
    """GPU slots (``devices_per_trial`` GPUs each) when GPUs are given/visible, else CPU slots."""
    if gpus is not None and str(gpus).strip().lower() in ("", "none", "cpu"):
        ids: list[str] = []
    elif gpus is not None and str(gpus).strip().lower() != "all":
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
    else:
        ids = visible_gpus()
    if ids:
        if devices_per_trial < 1 or len(ids) < devices_per_trial:
            raise ValueError(f"DEVICES_PER_TRIAL={devices_per_trial} but only {len(ids)} GPU(s) given: {ids}")
        groups = [ids[i:i + devices_per_trial] for i in range(0, len(ids) - devices_per_trial + 1, devices_per_trial)]
        if workers:
            groups = groups[:workers]
        return [Slot(i, ",".join(g), None) for i, g in enumerate(groups)]
    n = int(workers or 1)
    cpus = cpus or os.cpu_count() or 1
    # CPU DDP trials (DEVICES_PER_TRIAL > 1 without GPUs): that many gloo processes per trial
    return [Slot(i, "", max(1, cpus // (n * max(1, devices_per_trial)))) for i in range(n)]


def _worker_env(slot: Slot) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = slot.devices or ""
    if slot.threads:
        env["SWEEP_THREADS"] = str(slot.threads)
        env["OMP_NUM_THREADS"] = str(slot.threads)
        env["MKL_NUM_THREADS"] = str(slot.threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_workers(slots: list[Slot], sweep_json: Path, storage_url: str | None, study_name: str, results_root: str,
                  devices_per_trial: int, stage: str = "grid") -> list[subprocess.Popen]:
    procs = []
    for slot in slots:
        cmd = [sys.executable, "-m", "sweeps", "_worker", str(sweep_json), "--study", study_name,
               "--results-root", results_root, "--devices-per-trial", str(devices_per_trial),
               "--index", str(slot.index), "--stage", stage]
        if storage_url:
            cmd += ["--storage", storage_url]
        procs.append(popen_child(cmd, _worker_env(slot)))
        time.sleep(0.2)
    return procs


class ProgressDisplay:
    def __init__(self, study: optuna.Study, keys: list[str], n_slots: int, interval: float = 5.0, stream=None):
        self.study, self.keys, self.n_slots, self.interval = study, keys, n_slots, interval
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.time()
        self.last_line = ""
        self.last_print = 0.0
        self.seen_done: set[int] = set()

    def update(self, force: bool = False) -> None:
        try:
            p = S.progress(self.study, self.keys)
        except Exception:  # noqa: BLE001 (a storage hiccup must not stop the sweep)
            return
        for t in p.completed_trials:
            if t.number not in self.seen_done and t.datetime_complete and t.datetime_complete.timestamp() >= self.started - 1:
                self.seen_done.add(t.number)
                self._emit(f"  done: {t.user_attrs.get('variant')} seed={t.user_attrs.get('seed')} "
                           f"value={t.value:.4f} ({(t.datetime_complete - t.datetime_start).total_seconds():.0f} s)", newline=True)
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


def _safe_reap(study, sweep, rdb) -> None:
    try:
        S.reap(study, sweep, rdb)
    except Exception as e:  # noqa: BLE001 (a storage hiccup must not stop the sweep)
        log.warning("reaping failed: %s", e)


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
    write_json_atomic(spec, {"base_config": sweep.base_config, "overrides": {**sweep.overrides, **first}})
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-m", "sweeps", "_prepare", str(spec)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        print(f"[sweep] preparing the data failed (exit {r.returncode}); no trial was started:\n{tail}", file=sys.stderr)
        return False
    return True


def study_name_for(sweep: SweepDef, override: str | None = None) -> str:
    return override or os.environ.get("STUDY") or sweep.name


def run_sweep(sweep: SweepDef, storage_url: str | None = None, workers: int | None = None, gpus: str | None = None,
              devices_per_trial: int = 1, results_root: str = "results", study_name: str | None = None,
              retry_failed: bool = False, aggregate_at_end: bool = True, progress_interval: float = 5.0,
              max_rounds: int = 20, prepare_data: bool = True) -> int:
    """Run (or resume) a sweep to completion; returns 0 when every grid point is done."""
    res = S.results_dir(sweep.name, results_root)
    res.mkdir(parents=True, exist_ok=True)
    sweep_json = res / "sweep.json"
    write_json_atomic(sweep_json, sweep.to_dict())
    name = study_name_for(sweep, study_name)
    storage = S.make_storage(storage_url, sweep.name, results_root, sweep.max_retries)
    study = S.create_study(storage, name)
    study.set_user_attr("sweep", sweep.name)
    rdb = S.is_rdb_url(storage_url)
    slots = plan_slots(gpus, workers, devices_per_trial)
    log.info("sweep %s: %d grid points (%d variants x %s), storage %s, study %s, %d worker(s): %s",
             sweep.name, len(sweep.points()), len(sweep.variants()),
             f"{len(sweep.grid.get('seed_everything', [None]))} seeds", S.storage_label(storage_url, sweep.name, results_root),
             name, len(slots), ", ".join(f"GPU {s.devices}" if s.devices else f"CPU x{s.threads} threads" for s in slots))

    if prepare_data and not _prepare_data(sweep, res):
        return 2

    extra = None
    if sweep.tune is not None:
        from .tune import run_tuning
        extra = run_tuning(sweep, storage, storage_url, name, slots, results_root, sweep_json, devices_per_trial)
        if extra is None:
            return 130
        write_json_atomic(res / "tuned.json", extra)

    added = S.enqueue_grid(study, sweep, extra)
    if retry_failed:
        added += S.requeue_failed(study)
    reaped = S.reap(study, sweep, rdb)
    log.info("enqueued %d new grid point(s); re-queued %d trial(s) of dead workers", added, len(reaped))

    keys = [p.key for p in sweep.points()]
    display = ProgressDisplay(study, keys, len(slots), progress_interval)
    interrupted = False
    procs: list[subprocess.Popen] = []

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True
        for pr in procs:
            if pr.poll() is None:
                try:
                    pr.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    W, R = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
    rounds = 0
    last_reap = time.time()
    try:
        while not interrupted:
            if study.get_trials(deepcopy=False, states=(W,)):
                if rounds >= max_rounds:
                    log.warning("workers were started %d times and points are still queued; giving up", rounds)
                    break
                rounds += 1
                procs[:] = spawn_workers(slots, sweep_json, storage_url, name, results_root, devices_per_trial)
                while any(pr.poll() is None for pr in procs):
                    display.update()
                    time.sleep(min(progress_interval, 2.0))
                    if time.time() - last_reap > 60:  # dead workers elsewhere: their points are re-queued
                        last_reap = time.time()
                        _safe_reap(study, sweep, rdb)
                _safe_reap(study, sweep, rdb)  # a worker that was killed left its trial RUNNING
                continue
            if study.get_trials(deepcopy=False, states=(R,)):
                # other machines (or workers of another driver) are still running points: wait for
                # them, so that every machine's command ends with the whole sweep's results
                display.update()
                time.sleep(max(2.0, progress_interval))
                if time.time() - last_reap > 60:
                    last_reap = time.time()
                    _safe_reap(study, sweep, rdb)
                continue
            break
        display.update(force=True)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if interrupted:
        print(f"[sweep] interrupted; run the same command again to resume (finished trials are kept, "
              f"interrupted ones resume from their last checkpoint)", file=sys.stderr)
    p = S.progress(study, keys)
    if aggregate_at_end:
        try:
            from .aggregate import aggregate
            out = aggregate(sweep.name, results_root, sweep=sweep, study=study)
            print(f"[sweep] results: {out['summary_md']}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            log.warning("aggregation failed: %s", e)
    print(f"[sweep] dashboard: optuna-dashboard {S.storage_label(storage_url, sweep.name, results_root)}", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if p.count("done") == len(keys) else 1
