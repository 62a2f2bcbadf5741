"""Sweeps on SLURM end to end: ``odconv-sweep run --launcher slurm`` on a real one-node cluster.

The cluster (tests/slurm_cluster.py, the session's ``slurm_cluster`` fixture) runs munged,
slurmctld and slurmd as root in a temporary directory; without the Debian packages slurm-wlm
and munge, or not as root, these tests skip with the reason. Each test submits a small sweep
over experiments/smoke.yaml (synthetic data, a tiny model, 2 batches an epoch) as 2 worker
jobs of 1 CPU each and waits on the storage's and the scheduler's state, with deadlines. The
first test runs with the journal file, and in the slow suite (``make test-slow``) also with a
PostgreSQL study (SWEEP_TEST_PG, as tests/test_sweeps_e2e.py; skipped where unreachable).
A test that acts mid-trial holds its trials at the start of epoch 1 (tests/fit_gate.py) until
it has acted, so that no trial can finish its fit first. The cluster tests are in the
integration tier (``make test-integration``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from sweeps.definition import load_sweep
from sweeps.record import read_record
from sweeps.running import grid_queue as Q
from sweeps.running import slurm as SL
from sweeps.running.storage import rdb_url
from sweeps.slurm_options import SlurmOptions
from tests.conftest import wait_for
from tests.fit_gate import hold_at_epoch
from tests.slurm_cluster import (  # noqa: F401 (the slurm_cluster and cluster fixtures)
    SlurmCluster,
    cluster_fixture,
    slurm_cluster_fixture,
)
from tests.test_sweeps_e2e import PG_URL, _pg_available, assert_each_point_once, study_of, write_sweep

ROOT = Path(__file__).resolve().parents[1]
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
# 1 CPU a job: the node (this machine) runs both jobs at once; the warning signal's grace is
# signal_before_s - 10 s for the worker to stop its trial
SLURM = {"cpus_per_task": 1, "time_min": 15, "signal_before_s": 40}
RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                           optuna.trial.TrialState.FAIL)


def job_env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    for k in ("STORAGE", "WORKERS", "GPUS", "DEVICES_PER_TRIAL", "STUDY", "LAUNCHER", "SLURM_JOBS"):
        e.pop(k, None)
    return e


def submit(sw_yaml: Path, root: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """``odconv-sweep run <sweep> --launcher slurm --slurm-jobs 2``; the job ids it printed."""
    r = subprocess.run([sys.executable, "-m", "sweeps", "run", str(sw_yaml), "--results-root", str(root),
                        "--launcher", "slurm", "--slurm-jobs", "2", *args], cwd=ROOT, env={**job_env(), **(env or {})},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = r.stdout.split()
    assert len(ids) == 2 and "submitted 2 SLURM worker job(s)" in r.stderr, r.stdout + r.stderr
    return ids


def explain(root: Path, name: str, cluster: SlurmCluster):
    """What the jobs and trials said: for a timed-out wait's message."""
    def text() -> str:
        def tails(pattern: str, n: int) -> str:
            return "".join(f"\n--- {p}\n" + p.read_text()[-n:] for p in sorted((root / name).glob(pattern)))
        logs, trials = tails("slurm/*/*_log.*", 2500), tails("runs/*/train.log", 2000)
        return f"squeue: {cluster.run(['squeue', '--states=all'], check=False).stdout}{logs}{trials}"
    return text


def wait_until(predicate, timeout_s: float, what: str, why) -> object:
    try:
        return wait_for(predicate, timeout_s, what, interval=0.3)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{why()}") from None


def jobs_ended(ids: list[str]):
    def check():
        states = SL.list_jobs(ids)
        return states if all(s.state in ENDED for s in states) else None
    return check


def all_done(name: str, root: Path, n: int):
    return lambda: len([t for t in study_of(name, root).get_trials() if t.state == COMPLETE]) == n


def fit_ended(t: optuna.trial.FrozenTrial) -> bool:
    log = Path(t.user_attrs["run_dir"], "train.log")
    return log.exists() and "`Trainer.fit` stopped" in log.read_text(errors="replace")


def trials_in_training(name: str, root: Path, n: int):
    """n RUNNING trials of distinct jobs whose trial process has saved a checkpoint and is
    still fitting; else None."""
    def check():
        found = {}
        for t in study_of(name, root).get_trials():
            a = t.user_attrs
            if t.state == RUNNING and "trial_pid" in a and a.get("slurm_job_id") and \
                    (Path(a["run_dir"]) / "checkpoints" / "last.ckpt").exists() and not fit_ended(t):
                found.setdefault(a["slurm_job_id"], t)
        return found if len(found) >= n else None
    return check


def held_sweep(tmp_path: Path, name: str, seeds: list[int], epochs: int) -> tuple[Path, Path]:
    """A sweep over static x ``seeds`` whose fits hold at the start of epoch 1 while the gate
    file (the second value, created here) exists."""
    gate = tmp_path / f"{name}.hold"
    gate.touch()
    sw_yaml = write_sweep(tmp_path, name, {"conv": ["static"], "seed": seeds}, slurm=SLURM,
                          overrides={"trainer.max_epochs": epochs, "trainer.callbacks": [hold_at_epoch(gate)]})
    return sw_yaml, gate


def record_of(root: Path, name: str, t: optuna.trial.FrozenTrial):
    return read_record(root / name / "trials" / f"{Q.trial_point(t).slug}.json")


def train_log(root: Path, name: str, t: optuna.trial.FrozenTrial) -> str:
    return (root / name / "runs" / Q.trial_point(t).slug / "train.log").read_text()


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.slow)])
def storage(request) -> Iterator[tuple[str | None, str | None]]:
    """(storage URL, study name): the journal file under the results root, or a fresh study in
    the test PostgreSQL server (SWEEP_TEST_PG; skipped where it is unreachable)."""
    if request.param == "journal":
        yield None, None
        return
    why = _pg_available()
    if why:
        pytest.skip(why)
    study = f"test_slurm_{uuid.uuid4().hex[:10]}"
    try:
        yield PG_URL, study
    finally:
        try:
            optuna.delete_study(study_name=study, storage=rdb_url(PG_URL))
        except KeyError:
            pass


def test_default_job_count_is_one_per_waiting_point_capped(tmp_path, monkeypatch):
    """Without --slurm-jobs: one job per grid point left, at most MAX_DEFAULT_JOBS (no cluster
    needed: the submission itself is replaced by a recorder)."""
    from sweeps.running import runner as R
    submitted: list[int] = []
    monkeypatch.setattr(R, "submit_jobs", lambda argv, n, *a, **kw: submitted.append(n) or [str(i) for i in range(n)])
    opts = SlurmOptions()
    big = load_sweep(write_sweep(tmp_path, "big", {"conv": ["static"], "seed": list(range(R.MAX_DEFAULT_JOBS + 8))}))
    assert R.submit_sweep(big, opts, results_root=str(tmp_path), prepare_data=False) == 0
    small = load_sweep(write_sweep(tmp_path, "small", {"conv": ["static"], "seed": [0, 1, 2]}))
    assert R.submit_sweep(small, opts, results_root=str(tmp_path), prepare_data=False) == 0
    st = study_of("small", tmp_path)
    trial = st.ask()  # one waiting point taken and finished: two left
    st.tell(trial, 0.5)
    assert R.submit_sweep(small, opts, results_root=str(tmp_path), prepare_data=False) == 0
    assert R.submit_sweep(small, opts, n_jobs=5, results_root=str(tmp_path), prepare_data=False) == 0
    assert submitted == [R.MAX_DEFAULT_JOBS, 3, 2, 5]


@pytest.mark.integration
def test_sweep_as_two_jobs_runs_every_point_once_and_status_lists_the_jobs(cluster, storage, tmp_path):
    url, study_name = storage
    where = ["--storage", url, "--study", study_name] if url else []
    sw_yaml = write_sweep(tmp_path, "sl", {"conv": ["static", "odconv1x-channel", "odconv4x-kernel"], "seed": [0]},
                          slurm=SLURM)
    keys = [p.key for p in load_sweep(sw_yaml).points()]
    # options: the file's slurm: section, over it ODCONV_SLURM_* variables, over those --slurm flags
    ids = submit(sw_yaml, tmp_path, "--slurm", "time_min=14", *where,
                 env={"ODCONV_SLURM_TIME_MIN": "13", "ODCONV_SLURM_PARTITION": cluster.partition})
    assert SL.job_ids_in(tmp_path / "sl" / "slurm") == ids
    for job_id in ids:
        show = cluster.run(["scontrol", "-o", "show", "job", job_id]).stdout
        fields = dict(item.split("=", 1) for item in show.split() if "=" in item)
        assert (fields["TimeLimit"], fields["Partition"], fields["NumCPUs"], fields["Requeue"]) == \
            ("00:14:00", cluster.partition, "1", "1"), show
        script = (tmp_path / "sl" / "slurm" / job_id / f"{job_id}_submission.sh").read_text().splitlines()
        assert "#SBATCH --signal=USR1@40" in script
    why = explain(tmp_path, "sl", cluster)
    ended = wait_until(jobs_ended(ids), 240, "both jobs to end", why)
    assert [(s.state, s.node, s.restarts) for s in ended] == [("COMPLETED", cluster.node, 0)] * 2, why()
    st = study_of("sl", tmp_path, url, study_name)
    assert (tmp_path / "sl" / "optuna.journal").exists() == (url is None)
    done = assert_each_point_once(st, keys)
    assert len(st.get_trials()) == len(keys)  # no retry, no duplicate
    for key, t in done.items():
        rec = record_of(tmp_path, "sl", t)
        assert rec.grid_key == key and rec.status == "complete"
        assert rec.slurm_job_id in ids and rec.slurm_node == cluster.node and rec.host
        assert t.user_attrs["slurm_job_id"] == rec.slurm_job_id and t.user_attrs["slurm_node"] == cluster.node
        assert rec.resumed_from is None
    status = subprocess.run([sys.executable, "-m", "sweeps", "status", "sl", "--results-root", str(tmp_path), *where],
                            cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{len(keys)}/{len(keys)} done" in status.stdout
    job_lines = [line.split() for line in status.stdout.splitlines() if line.split()[:1] in ([ids[0]], [ids[1]])]
    assert [(j[0], j[1], j[2]) for j in job_lines] == [(ids[0], "COMPLETED", cluster.node),
                                                       (ids[1], "COMPLETED", cluster.node)], status.stdout
    # the same command again: every point is done, nothing is submitted
    # (the launcher from the environment, as `make ablation LAUNCHER=slurm` passes it)
    again = subprocess.run([sys.executable, "-m", "sweeps", "run", str(sw_yaml), "--results-root", str(tmp_path),
                            *where],
                           cwd=ROOT, env={**job_env(), "LAUNCHER": "slurm", "SLURM_JOBS": "2"}, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "no job submitted" in again.stderr, again.stdout + again.stderr
    assert SL.job_ids_in(tmp_path / "sl" / "slurm") == ids


@pytest.mark.integration
def test_signalled_job_and_requeued_job_resume_their_trials_from_checkpoints(cluster, tmp_path):
    sw_yaml, gate = held_sweep(tmp_path, "pre", [0, 1], epochs=4)
    keys = [p.key for p in load_sweep(sw_yaml).points()]
    ids = submit(sw_yaml, tmp_path)
    why = explain(tmp_path, "pre", cluster)
    running = wait_until(trials_in_training("pre", tmp_path, 2), 240, "a trial in training in each job", why)
    signalled, requeued = sorted(running)
    victims = {job: running[job] for job in (signalled, requeued)}
    st = study_of("pre", tmp_path)
    assert all(st.trials[t.number].state == RUNNING for t in victims.values())
    try:
        cluster.run(["scancel", "--signal=USR1", signalled])
        cluster.run(["scontrol", "requeue", requeued])
    finally:
        gate.unlink()
    ended = wait_until(jobs_ended(ids), 300, "both jobs to end after their requeue", why)
    assert [(s.job_id, s.state, s.restarts) for s in ended] == [(signalled, "COMPLETED", 1),
                                                               (requeued, "COMPLETED", 1)], why()
    st = study_of("pre", tmp_path)
    done = assert_each_point_once(st, keys)
    assert len(st.get_trials()) == len(keys) + 2  # one more trial per stopped point, nothing else

    # the signalled trial stopped gracefully: a checkpoint at its current step, then interrupted
    # without using up a retry
    sig = st.trials[victims[signalled].number]
    assert sig.state == FAIL and sig.user_attrs["fail_reason"] == "interrupted"
    log = train_log(tmp_path, "pre", sig)
    assert "trial stopped by SIGUSR1: saved" in log, log[-3000:]
    retry = done[sig.user_attrs["grid_key"]]
    assert retry.user_attrs["retry_of"] == sig.number and retry.user_attrs["retries"] == 0
    # the requeued one was stopped by SIGTERM (KillWait later SIGKILL): interrupted, or reaped
    # as a dead worker when the kill came first
    rq = st.trials[victims[requeued].number]
    assert rq.state == FAIL, rq
    assert rq.user_attrs["fail_reason"] == "interrupted" or "gone" in rq.user_attrs["fail_reason"], rq.user_attrs
    for victim in (sig, rq):
        retry = done[victim.user_attrs["grid_key"]]
        assert retry.user_attrs["retry_of"] == victim.number
        rec = record_of(tmp_path, "pre", retry)
        # resumed from the checkpoint its stopped attempt left, and trained to the end
        assert rec.resumed_from and Path(rec.resumed_from).name == "last.ckpt"
        assert rec.epochs == 4 and len(rec.val_history) == 4
        assert rec.slurm_job_id in ids and rec.slurm_node == cluster.node
        assert "Restoring states from the checkpoint path at" in train_log(tmp_path, "pre", retry)


@pytest.mark.integration
def test_cancelled_job_is_reaped_and_its_trial_rerun_by_the_other_job(cluster, tmp_path):
    sw_yaml, gate = held_sweep(tmp_path, "cxl", [0, 1, 2], epochs=4)
    keys = [p.key for p in load_sweep(sw_yaml).points()]
    ids = submit(sw_yaml, tmp_path)
    why = explain(tmp_path, "cxl", cluster)
    running = wait_until(trials_in_training("cxl", tmp_path, 2), 240, "a trial in training in each job", why)
    assert sorted(running) == sorted(ids)
    cancelled, survivor = sorted(running)
    victim = running[cancelled]
    try:  # the survivor is still at work (held) when the other job is gone
        cluster.run(["scancel", cancelled])
        (gone,) = wait_until(jobs_ended([cancelled]), 60, f"job {cancelled} to end", why)
        assert gone.state == "CANCELLED"
    finally:
        gate.unlink()
    wait_until(jobs_ended([survivor]), 300, f"job {survivor} to end", why)
    st = study_of("cxl", tmp_path)
    done = assert_each_point_once(st, keys)
    assert len(st.get_trials()) == len(keys) + 1
    v = st.trials[victim.number]
    assert v.state == FAIL
    retry = done[victim.user_attrs["grid_key"]]
    assert retry.user_attrs["retry_of"] == victim.number
    # SIGTERM then SIGKILL after KillWait: the worker either marked its trial interrupted in
    # time (no retry used), or was killed first and the survivor reaped it (one retry used)
    reason = v.user_attrs["fail_reason"]
    assert (reason, retry.user_attrs["retries"]) == ("interrupted", 0) or \
        ("gone" in reason and retry.user_attrs["retries"] == 1), (reason, retry.user_attrs)
    rec = record_of(tmp_path, "cxl", retry)
    assert rec.slurm_job_id == survivor and rec.resumed_from and Path(rec.resumed_from).name == "last.ckpt"
    assert rec.epochs == 4 and len(rec.val_history) == 4


@pytest.mark.integration
@pytest.mark.slow
def test_time_limit_warning_signal_stops_the_trial_and_the_requeued_job_resumes_it(cluster, tmp_path):
    """No signal from the test: SLURM itself sends the warning signal signal_before_s before
    the job's 3-minute limit (slurmctld checks limits about every 30 s), while the trial is
    held; the job is requeued and resumes the trial from its checkpoint."""
    gate = tmp_path / "tl.hold"
    gate.touch()
    sw_yaml = write_sweep(tmp_path, "tl", {"conv": ["static"], "seed": [0]},
                          slurm={**SLURM, "time_min": 3, "signal_before_s": 60},
                          overrides={"trainer.max_epochs": 4, "trainer.callbacks": [hold_at_epoch(gate)]})
    r = subprocess.run([sys.executable, "-m", "sweeps", "run", str(sw_yaml), "--results-root", str(tmp_path),
                        "--launcher", "slurm"], cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (job,) = r.stdout.split()  # the default: one job for the one point
    why = explain(tmp_path, "tl", cluster)
    (held,) = wait_until(trials_in_training("tl", tmp_path, 1), 120, "the trial held in training", why).values()

    def warned() -> bool:
        logs = (tmp_path / "tl" / "slurm" / job).glob("*_log.*")
        return any("Caught signal SIGUSR1" in p.read_text(errors="replace") for p in logs)
    try:
        wait_until(warned, 240, "the time limit's warning signal", why)
    finally:
        gate.unlink()
    (ended,) = wait_until(jobs_ended([job]), 240, f"job {job} to end after its requeue", why)
    assert (ended.state, ended.restarts) == ("COMPLETED", 1), why()
    st = study_of("tl", tmp_path)
    (done,) = assert_each_point_once(st, [p.key for p in load_sweep(sw_yaml).points()]).values()
    stopped = st.trials[held.number]
    assert stopped.state == FAIL and stopped.user_attrs["fail_reason"] == "interrupted"
    assert "trial stopped by SIGUSR1: saved" in train_log(tmp_path, "tl", stopped)
    assert done.user_attrs["retry_of"] == held.number and done.user_attrs["retries"] == 0
    rec = record_of(tmp_path, "tl", done)
    assert rec.resumed_from and Path(rec.resumed_from).name == "last.ckpt"
    assert rec.epochs == 4 and len(rec.val_history) == 4 and rec.slurm_job_id == job


@pytest.mark.integration
def test_gpu_jobs_get_one_gpu_each(cluster, tmp_path):
    """`gpus_per_job: 1` reaches sbatch (--gpus-per-node): on the test node's two GPUs (plain
    files, tests/slurm_cluster.py) the two worker jobs run at once, one GPU each (read while
    their trials are held, as SLURM shows a job's GPU indices only while it runs)."""
    gate = tmp_path / "gpu.hold"
    gate.touch()
    sw_yaml = write_sweep(tmp_path, "gpu", {"conv": ["static"], "seed": [0, 1]}, slurm={**SLURM, "gpus_per_job": 1},
                          overrides={"trainer.max_epochs": 2, "trainer.callbacks": [hold_at_epoch(gate)]})
    keys = [p.key for p in load_sweep(sw_yaml).points()]
    ids = submit(sw_yaml, tmp_path)
    why = explain(tmp_path, "gpu", cluster)
    gpus = {}
    try:
        wait_until(trials_in_training("gpu", tmp_path, 2), 240, "a trial in training in each job", why)
        for job in ids:
            detail = cluster.run(["scontrol", "show", "job", "-d", job]).stdout
            assert "TresPerNode=gres:gpu:1" in detail, detail
            gpus[job] = [line.split("GRES=gpu:1(IDX:")[1].split(")")[0] for line in detail.splitlines()
                         if "GRES=gpu:1(IDX:" in line]
    finally:
        gate.unlink()
    assert sorted(gpus.values()) == [["0"], ["1"]], (gpus, why())
    wait_until(jobs_ended(ids), 300, "both GPU jobs to end", why)
    assert_each_point_once(study_of("gpu", tmp_path), keys)
