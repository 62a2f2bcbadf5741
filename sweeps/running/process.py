"""Process management of a sweep: worker slots, spawning workers and trial processes, signals,
waiting. The tuning stage and the grid stage both run their workers through :func:`run_workers`.

Ctrl-C in a terminal sends SIGINT to the whole process group: the driver, its workers and their
trial processes. The driver's :class:`StopRequest` notes it and passes SIGTERM on to its workers
(which also covers a SIGTERM sent to the driver alone); a worker stops after its running trial,
passing SIGINT on to the trial (Lightning then stops gracefully), and treats a second signal
within 3 s as the same Ctrl-C. Every child dies with its parent (``PR_SET_PDEATHSIG``), so a
killed driver or worker leaves no orphaned fit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("sweeps")


@dataclass
class Slot:
    """One worker's share of the machine: ``devices`` is its ``CUDA_VISIBLE_DEVICES`` ("" = CPU
    only), ``threads`` its torch/OpenMP threads on CPU (None: the library default)."""

    index: int
    devices: str | None
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
    """GPU slots (``devices_per_trial`` GPUs each) when GPUs are given/visible, else CPU slots.
    Raises ``ValueError`` naming the bad value for impossible requests."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers/WORKERS must be >= 1, got {workers}")
    if devices_per_trial < 1:
        raise ValueError(f"--devices-per-trial/DEVICES_PER_TRIAL must be >= 1, got {devices_per_trial}")
    if gpus is not None and str(gpus).strip().lower() in ("", "none", "cpu"):
        ids: list[str] = []
    elif gpus is not None and str(gpus).strip().lower() != "all":
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
        bad = [g for g in ids if not g.isdigit()]
        if bad:
            raise ValueError(f"--gpus/GPUS must be GPU ids like 0,1,2 (or 'all', 'cpu'), got {gpus!r}")
    else:
        ids = visible_gpus()
    if ids:
        if len(ids) < devices_per_trial:
            raise ValueError(f"DEVICES_PER_TRIAL={devices_per_trial} but only {len(ids)} GPU(s) given: {ids}")
        groups = [ids[i:i + devices_per_trial] for i in range(0, len(ids) - devices_per_trial + 1, devices_per_trial)]
        if workers:
            groups = groups[:workers]
        return [Slot(i, ",".join(g), None) for i, g in enumerate(groups)]
    n = int(workers or 1)
    cpus = cpus or os.cpu_count() or 1
    # CPU DDP trials (DEVICES_PER_TRIAL > 1 without GPUs): that many gloo processes per trial
    return [Slot(i, "", max(1, cpus // (n * devices_per_trial))) for i in range(n)]


def slot_env(slot: Slot) -> dict[str, str]:
    """The environment of a worker on ``slot``: its devices and its OpenMP/MKL threads pinned
    before Python starts (its trials inherit them; torch's own thread count travels on the
    worker's command line, :func:`worker_command`)."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = slot.devices or ""
    if slot.threads:
        env["OMP_NUM_THREADS"] = str(slot.threads)
        env["MKL_NUM_THREADS"] = str(slot.threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _set_pdeathsig() -> None:
    """Child dies with its parent (Linux): a SIGKILLed worker does not leave an orphan fit."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 (not Linux: children may outlive a killed parent)
        pass


def popen_child(cmd: list[str], env: dict[str, str], log_path: Path | None = None,
                ignore: tuple[signal.Signals, ...] = ()) -> subprocess.Popen:
    """Start ``cmd`` as a child that dies with this process; output to ``log_path`` (appended)
    or inherited. The signals in ``ignore`` start ignored in the child (ignoring survives exec),
    until it installs its own handlers: e.g. a SLURM warning signal that would otherwise kill
    a child still starting up."""
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 (the child keeps its own handle)

    def before_exec() -> None:
        _set_pdeathsig()
        for s in ignore:
            signal.signal(s, signal.SIG_IGN)

    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                preexec_fn=before_exec if sys.platform.startswith("linux") else None)
    finally:
        if out:
            out.close()


class StopRequest:
    """SIGINT/SIGTERM handling of a process that runs children: while installed (a context
    manager), a signal sets :attr:`requested` and passes SIGTERM on to the registered children."""

    def __init__(self) -> None:
        self.requested = False
        self.children: list[subprocess.Popen] = []
        self._old: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        for child in self.children:
            if child.poll() is None:
                try:
                    child.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    def __enter__(self) -> "StopRequest":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of a study is started with (on its command line): the study, where its
    files are, the devices of a trial, how long to wait for an unreachable storage (passed on
    to its trials) and how often to beat a running trial's heartbeat."""

    study_name: str
    results_root: str
    storage_url: str | None
    devices_per_trial: int
    outage_limit_s: float
    heartbeat_s: float


def worker_command(sweep_json: Path, settings: WorkerSettings, index: int, stage: str,
                   threads: int | None = None) -> list[str]:
    """``python -m sweeps _worker ...`` (:func:`sweeps.running.worker.main`): worker ``index`` of
    ``stage`` (grid | tune); ``threads``: torch threads of its trials (None: torch's default)."""
    cmd = [sys.executable, "-m", "sweeps", "_worker", str(sweep_json), "--study", settings.study_name,
           "--results-root", settings.results_root, "--devices-per-trial", str(settings.devices_per_trial),
           "--index", str(index), "--stage", stage, "--outage-limit", repr(float(settings.outage_limit_s)),
           "--heartbeat", repr(float(settings.heartbeat_s))]
    if threads:
        cmd += ["--threads", str(threads)]
    if settings.storage_url:
        cmd += ["--storage", settings.storage_url]
    return cmd


def run_workers(slots: list[Slot], command: Callable[[Slot], list[str]], stop: StopRequest,
                tick: Callable[[], None] = lambda: None, interval: float = 2.0) -> list[int]:
    """Start one worker per slot and wait for all of them, calling ``tick`` every ``interval``
    seconds; returns their exit codes. A stop request (Ctrl-C) reaches them through ``stop``."""
    procs: list[subprocess.Popen] = []
    stop.children = procs
    for slot in slots:
        procs.append(popen_child(command(slot), slot_env(slot)))
    while any(p.poll() is None for p in procs):
        try:
            tick()
        except Exception:  # noqa: BLE001 (the workers die with this process: a progress line must not end them)
            log.exception("progress/reaping failed; the workers go on")
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
    return [p.returncode for p in procs]
