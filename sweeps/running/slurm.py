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

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from ..slurm_options import SIGNALS, SlurmOptions

# the seconds the wrapper keeps after the child's grace period for `scontrol requeue` and exit
REQUEUE_MARGIN_S = 10


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
    grace_s = float(max(1, options.signal_before_s - REQUEUE_MARGIN_S))
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
