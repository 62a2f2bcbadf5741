"""Run a command line as SLURM batch jobs through ``submitit``, and see those jobs.

Pieces (the sweep integration builds on them):

- :class:`SlurmOptions`: what every job asks the scheduler for, built by
  :meth:`SlurmOptions.from_mapping` from a mapping (the ``slurm:`` section of a sweep file)
  with overrides from ``ODCONV_SLURM_*`` environment variables; a bad key or value raises
  :class:`SlurmOptionsError` naming it and what is valid.
- :func:`submit_jobs`: submits n jobs that each run one argv (e.g.
  ``[sys.executable, "-m", "sweeps", ...]``) with ``--requeue`` and
  ``--signal=<signal>@<signal_before_s>``; their submitit files go to ``<folder>/<job id>/``
  and the ids are appended to ``<folder>/jobs.txt``.
- :func:`list_jobs`: the scheduler's state of given job ids (``squeue``; ``sacct`` for jobs
  squeue has forgotten, where the cluster keeps accounting).
- :func:`current_job`: inside a job, its SLURM job id, node and restart count (for the trial record).

Signals and requeue inside a job: the batch script runs submitit's job wrapper under
``srun``, and the wrapper runs the argv as a child process. ``scancel --signal=<signal>``
delivers the warning signal to every process of the job step, the child's own children
included (trial processes, DataLoader workers); the time limit's warning (``--signal``)
reaches only the step's task, the wrapper (seen with SLURM 22.05). So the wrapper passes it
on to the child, which should stop gracefully (checkpoint, then exit) and pass it on to its
own children. Note that Lightning (2.6)
in a process under ``srun`` detects SLURM and, unless its Trainer gets
``SLURMEnvironment(auto_requeue=False)`` or SIGUSR1 already has a handler or is ignored,
answers SIGUSR1 by saving an hpc checkpoint and running ``scontrol requeue`` itself. The
wrapper, told by ``SUBMITIT_PREEMPT_SIGNAL`` to treat that signal as preemption, waits
for the child to exit (at most ``signal_before_s - 10`` seconds, then kills it) and
requeues the job (``scontrol requeue``); the requeued job runs the same argv again, with
``SLURM_RESTART_COUNT`` one higher. ``scontrol requeue`` from outside kills the running
job (SIGTERM, SIGKILL ``KillWait`` seconds later) and queues it again; ``scancel`` without
``--signal`` ends it as CANCELLED.

Checked against submitit 1.5.4: only its public API (``SlurmExecutor``,
``update_parameters``, ``helpers.Checkpointable``, ``helpers.DelayedSubmission``,
``Job.job_id``) and the documented ``SUBMITIT_PREEMPT_SIGNAL`` variable.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

ENV_PREFIX = "ODCONV_SLURM_"
SIGNALS = ("USR1", "USR2")
# sbatch options the typed fields (or this module) set; `extra_sbatch` may not set them too.
_MANAGED_SBATCH = {
    "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
    "time": "time_min", "mem": "mem_gb", "gpus-per-node": "gpus_per_job", "cpus-per-task": "cpus_per_task",
    "signal": "signal / signal_before_s", "requeue": "(always set)", "no-requeue": "(requeue is always set)",
    "output": "(submitit's log files)", "error": "(submitit's log files)", "open-mode": "(submitit's log files)",
    "job-name": "submit_jobs(job_name=...)", "array": "(one job per worker)",
    "nodes": "(one node per job)", "ntasks-per-node": "(one task per job)",
}
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.,:&|()!*+=-]+$")  # partition/account/qos names and constraint expressions
# the seconds the wrapper keeps after the child's grace period for `scontrol requeue` and exit
_REQUEUE_MARGIN_S = 10


class SlurmOptionsError(ValueError):
    """A bad `slurm:` option or ODCONV_SLURM_* variable; the message names it and what is valid."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each worker job asks SLURM for (one node, one task per job).

    ``extra_sbatch`` maps further sbatch long options (without ``--``) to a value, or to
    ``True`` for a flag: e.g. ``{"exclude": "node07", "exclusive": True}``.
    """

    gpus_per_job: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None            # None: the partition's default
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal: str = "USR1"                   # sent to the job step signal_before_s before the time limit
    signal_before_s: int = 120
    max_timeout_requeues: int = 100        # submitit stops requeueing a job after this many time-outs
    extra_sbatch: dict[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a warning at or before the start would preempt every job as soon as it runs
        if self.signal_before_s >= self.time_min * 60:
            raise SlurmOptionsError(
                f"slurm.signal_before_s: must be less than the time limit (time_min {self.time_min} = "
                f"{self.time_min * 60} s), got {self.signal_before_s}: the warning would come at the job's start")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> SlurmOptions:
        """Options from `mapping` (e.g. a sweep file's ``slurm:`` section), each overridden by
        a non-empty ``ODCONV_SLURM_<KEY>`` in `environ` (default ``os.environ``): e.g.
        ``ODCONV_SLURM_PARTITION=gpu``, ``ODCONV_SLURM_TIME_MIN=240``,
        ``ODCONV_SLURM_EXTRA_SBATCH="--exclude=node07 --exclusive"``."""
        environ = os.environ if environ is None else environ
        mapping = {} if mapping is None else mapping
        if not isinstance(mapping, Mapping):
            raise SlurmOptionsError(f"slurm: must be a mapping of options, got {mapping!r}; "
                                    f"valid keys: {', '.join(cls.keys())}")
        unknown = sorted(str(k) for k in mapping if k not in cls.keys())
        if unknown:
            raise SlurmOptionsError(f"slurm: unknown key(s) {unknown}; valid keys: {', '.join(cls.keys())}")
        unknown_env = sorted(k for k in environ if k.startswith(ENV_PREFIX)
                             and k[len(ENV_PREFIX):].lower() not in cls.keys())
        if unknown_env:
            valid = ", ".join(ENV_PREFIX + k.upper() for k in cls.keys())
            raise SlurmOptionsError(f"unknown environment variable(s) {unknown_env}; valid: {valid}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name = ENV_PREFIX + f.name.upper()
            if environ.get(env_name, "") != "":
                values[f.name] = _parse(f.name, environ[env_name], env_name, from_env=True)
            elif f.name in mapping:
                values[f.name] = _parse(f.name, mapping[f.name], f"slurm.{f.name}", from_env=False)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> SlurmOptions:
        """A copy with some fields replaced (e.g. from command-line flags), validated like a mapping."""
        unknown = sorted(set(overrides) - set(self.keys()))
        if unknown:
            raise SlurmOptionsError(f"unknown slurm option(s) {unknown}; valid: {', '.join(self.keys())}")
        return replace(self, **{k: _parse(k, v, f"slurm.{k}", from_env=False) for k, v in overrides.items()})

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "nodes": 1,
            "ntasks_per_node": 1,
            # the wrapper's handler for this signal is what requeues the job (see the module doc)
            "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={self.signal}"],
            "additional_parameters": {**self.extra_sbatch, "requeue": True,
                                      "signal": f"{self.signal}@{self.signal_before_s}"},
        }
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.mem_gb is not None:
            params["mem"] = f"{max(1, math.ceil(self.mem_gb * 1024))}M"
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params


def _parse(name: str, raw: Any, where: str, from_env: bool) -> Any:
    """One option's value, converted from a string where it came from the environment."""
    def bad(expected: str) -> SlurmOptionsError:
        return SlurmOptionsError(f"{where}: {expected}, got {raw!r}")

    if name in ("gpus_per_job", "cpus_per_task", "time_min", "signal_before_s", "max_timeout_requeues"):
        lowest = {"gpus_per_job": 0, "cpus_per_task": 1, "time_min": 1, "signal_before_s": 0,
                  "max_timeout_requeues": 0}[name]
        value = raw
        if from_env and isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            value = int(raw)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise bad(f"must be an integer >= {lowest}")
        if name == "signal_before_s" and value > 65535:
            raise bad("must be at most 65535 (sbatch --signal's limit)")
        return value
    if name == "mem_gb":
        value = raw
        if from_env and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise bad("must be a number of GiB > 0") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise bad("must be a number of GiB > 0")
        return float(value)
    if name in ("partition", "account", "qos", "constraint"):
        if not isinstance(raw, str) or not _NAME.fullmatch(raw):
            raise bad("must be a non-empty name without spaces")
        return raw
    if name == "signal":
        value = raw.upper().removeprefix("SIG") if isinstance(raw, str) else raw
        if value not in SIGNALS:
            raise bad(f"must be one of {', '.join(SIGNALS)}")
        return value
    if name == "extra_sbatch":
        if from_env:
            return _parse_extra(_sbatch_tokens(raw, where), where)
        if not isinstance(raw, Mapping):
            raise bad("must be a mapping of sbatch long options (without --) to values")
        return _parse_extra(dict(raw), where)
    raise SlurmOptionsError(f"unknown slurm option {name!r}")  # unreachable: keys are checked first


def _sbatch_tokens(raw: str, where: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for token in shlex.split(raw):
        if not token.startswith("--"):
            raise SlurmOptionsError(f"{where}: sbatch options must be long options like --exclude=node07, "
                                    f"got {token!r}")
        key, sep, value = token[2:].partition("=")
        out[key] = value if sep else True
    return out


def _parse_extra(extra: dict[Any, Any], where: str) -> dict[str, str | int | bool]:
    out: dict[str, str | int | bool] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not _SBATCH_KEY.fullmatch(key):
            raise SlurmOptionsError(f"{where}: {key!r} is not an sbatch long option name (like 'exclude')")
        if key in _MANAGED_SBATCH:
            raise SlurmOptionsError(f"{where}: {key!r} is set by the launcher; use {_MANAGED_SBATCH[key]} instead")
        if not isinstance(value, (str, int, bool)) or value is False or value == "":
            raise SlurmOptionsError(f"{where}.{key}: must be a string, an integer or true (a flag), got {value!r}")
        out[key] = value
    return out


class CommandJob(Checkpointable):
    """The function a worker job runs: `argv` as a child process, its output in the job's log.

    Returns the child's exit status 0, or raises CalledProcessError (the job then FAILS).
    On the preemption signal, submitit calls :meth:`checkpoint`, which passes the signal on
    to the child (SLURM's time-limit warning reaches the wrapper alone), waits for the child
    to exit and hands back a fresh copy of this job, which submitit requeues.
    """

    def __init__(self, argv: Sequence[str], cwd: str | None = None, grace_s: float = 60.0) -> None:
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.grace_s = grace_s
        self._child_pid: int | None = None

    def __call__(self) -> int:
        proc = subprocess.Popen(self.argv, cwd=self.cwd)
        self._child_pid = proc.pid
        status = proc.wait()
        if status != 0:
            raise subprocess.CalledProcessError(status, self.argv)
        return status

    def checkpoint(self) -> DelayedSubmission:
        """Runs in the wrapper's signal handler: no Popen call here (the interrupted wait holds its lock)."""
        pid, sig = self._child_pid, stop_signal()
        if pid is not None:
            if sig is not None and not _child_exited(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.grace_s
            while not _child_exited(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _child_exited(pid):
                os.kill(pid, signal.SIGKILL)
        return DelayedSubmission(CommandJob(self.argv, self.cwd, self.grace_s))

    def __getstate__(self) -> dict[str, Any]:
        return {"argv": self.argv, "cwd": self.cwd, "grace_s": self.grace_s, "_child_pid": None}


def _child_exited(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it (WNOWAIT leaves the status to Popen)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def submit_jobs(argv: Sequence[str], n_jobs: int, options: SlurmOptions, folder: Path | str,
                job_name: str = "odconv-sweep", cwd: Path | str | None = None) -> list[str]:
    """Submit `n_jobs` jobs that each run `argv` (in `cwd`, default the current directory);
    return their SLURM job ids, also appended to ``<folder>/jobs.txt``.

    Each job's submitit files (batch script, pickles, stdout/stderr logs) are in
    ``<folder>/<job id>/``. `folder` must be on a filesystem the compute nodes see.
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    if not argv:
        raise ValueError("argv must name a command, got an empty list")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=options.max_timeout_requeues)
    executor.update_parameters(job_name=job_name, **options.executor_parameters())
    grace_s = float(max(1, options.signal_before_s - _REQUEUE_MARGIN_S))
    run_dir = str(Path(cwd).resolve()) if cwd is not None else os.getcwd()
    ids = []
    for _ in range(n_jobs):
        job = executor.submit(CommandJob(argv, cwd=run_dir, grace_s=grace_s))
        ids.append(str(job.job_id))
        with (folder / "jobs.txt").open("a") as f:
            f.write(f"{job.job_id}\n")
    return ids


def job_ids_in(folder: Path | str) -> list[str]:
    """The job ids `submit_jobs` recorded in `folder` (oldest first); [] if none."""
    path = Path(folder) / "jobs.txt"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class JobStatus:
    """One job as the scheduler reports it. `state` is SLURM's (PENDING, RUNNING, COMPLETED,
    CANCELLED, FAILED, TIMEOUT, REQUEUED, ...) or UNKNOWN when no source knows the job."""

    job_id: str
    state: str
    node: str          # the node it runs/ran on; "" while pending
    reason: str        # why it is pending (or how it ended); "" if none
    restarts: int | None  # how often it was requeued; None where the source does not say
    source: str        # "squeue", "sacct" or "none"


def list_jobs(job_ids: Sequence[str], timeout_s: float = 30) -> list[JobStatus]:
    """The state of each job id, in the given order.

    ``squeue --states=all`` knows pending, running and recently ended jobs (for slurm.conf's
    MinJobAge, 300 s by default). For the others this asks ``sacct``; a cluster without
    accounting storage has none, and those jobs are reported UNKNOWN with sacct's answer as
    the reason.
    """
    ids = [str(j) for j in job_ids]
    if not ids:
        return []
    found: dict[str, JobStatus] = {}
    fmt = "JobID:|,State:|,NodeList:|,Reason:|,RestartCnt:"
    res = subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-O", fmt],
                         capture_output=True, text=True, timeout=timeout_s)
    # squeue exits 1 ("Invalid job id specified") when none of the ids is known any more
    if res.returncode != 0 and "Invalid job id" not in res.stderr:
        raise RuntimeError(f"squeue failed ({res.returncode}): {res.stderr.strip()}")
    for line in res.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or parts[0] not in ids:
            continue
        job_id, state, node, reason, restarts = parts
        found[job_id] = JobStatus(job_id, state, node, "" if reason == "None" else reason,
                                  int(restarts) if restarts.isdigit() else None, "squeue")
    missing = [j for j in ids if j not in found]
    if missing:
        found.update(_sacct_states(missing, timeout_s))
    return [found[j] for j in ids]


def _sacct_states(ids: Sequence[str], timeout_s: float) -> dict[str, JobStatus]:
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,NodeList,Reason", "-j", ",".join(ids)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        answer = (res.stderr or res.stdout).strip() if res.returncode != 0 else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        res, answer = None, str(e)
    out: dict[str, JobStatus] = {}
    if res is not None and res.returncode == 0:
        for line in res.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 4 and parts[0] in ids:
                # sacct writes "CANCELLED by 0"; the state is the first word
                out[parts[0]] = JobStatus(parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN", parts[2],
                                          "" if parts[3] == "None" else parts[3], None, "sacct")
        answer = "not in sacct"
    for j in ids:
        out.setdefault(j, JobStatus(j, "UNKNOWN", "", f"not in squeue; sacct: {answer}", None, "none"))
    return out


@dataclass(frozen=True)
class CurrentJob:
    """Where this process runs under SLURM: for the trial record."""

    job_id: str          # SLURM_JOB_ID (an array task's own id)
    node: str            # SLURMD_NODENAME, else SLURM_JOB_NODELIST (compressed, e.g. "gpu[01-02]")
    restart_count: int   # SLURM_RESTART_COUNT: 0 on the first run, +1 per requeue


def stop_signal(environ: Mapping[str, str] | None = None) -> signal.Signals | None:
    """The warning signal a worker job of :func:`submit_jobs` gets before it is preempted or
    hits its time limit (the job's ``SUBMITIT_PREEMPT_SIGNAL``, which the launcher sets);
    None outside such a job."""
    environ = os.environ if environ is None else environ
    name = environ.get("SUBMITIT_PREEMPT_SIGNAL", "").upper().removeprefix("SIG")
    if not environ.get("SLURM_JOB_ID") or name not in SIGNALS:
        return None
    return signal.Signals["SIG" + name]


def current_job(environ: Mapping[str, str] | None = None) -> CurrentJob | None:
    """The SLURM job this process runs in, from its environment; None outside SLURM."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID", "")
    if not job_id:
        return None
    node = environ.get("SLURMD_NODENAME") or environ.get("SLURM_JOB_NODELIST") or ""
    restarts = environ.get("SLURM_RESTART_COUNT", "0")
    return CurrentJob(job_id=job_id, node=node, restart_count=int(restarts) if restarts.isdigit() else 0)
