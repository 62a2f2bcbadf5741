"""sweeps.running.slurm: the options, and jobs on a real one-node SLURM cluster started for this file.

The cluster (tests/slurm_cluster.py) runs munged, slurmctld and slurmd as root in a temporary
directory; without the Debian packages slurm-wlm and munge, or not as root, the cluster tests
skip with the reason. Every wait polls the scheduler or a job's record file, with a deadline; a
job the test acts on runs until the test releases it (a release file). The cluster tests are in
the integration tier (``make test-integration``); the options tests are fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import submitit

from sweeps.running import slurm as S
from sweeps.slurm_options import SlurmOptions, SlurmOptionsError
from tests import slurm_cluster as slurm_cluster_module
from tests.slurm_cluster import (  # noqa: F401  (the slurm_cluster and cluster fixtures)
    ClusterUnavailable,
    SlurmCluster,
    cluster_fixture,
    slurm_cluster_fixture,
    start_cluster,
    stepd_pids_under,
)

ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}

# The job's command: appends one line per event ("start", "signal SIGxxx", "done") with the
# SLURM job id, node and restart count it sees, and runs until the release file exists.
# With a third argument "nested" it runs that under a parent process that ignores the signals.
RECORDER = """\
import os, signal, subprocess, sys, time
record, release = sys.argv[1], sys.argv[2]
if sys.argv[3:] == ["nested"]:  # run the recorder as a grandchild of the job's wrapper, ignoring the signal here
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(subprocess.call([sys.executable, *sys.argv[:3]]))
def log(event):
    with open(record, "a") as f:
        f.write(f"{event}|{os.environ.get('SLURM_JOB_ID')}|{os.environ.get('SLURMD_NODENAME')}|"
                f"{os.environ.get('SLURM_RESTART_COUNT', '0')}\\n")
def on_signal(signum, frame):
    log("signal " + signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
log("start")
deadline = time.monotonic() + 120
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
log("done")
"""


# ---------------------------------------------------------------- options (no cluster)

def test_options_defaults_mapping_and_env_overrides():
    assert SlurmOptions.from_mapping({}, environ={}) == SlurmOptions()
    section = {"gpus_per_job": 2, "cpus_per_task": 8, "mem_gb": 32, "time_min": 240, "partition": "gpu",
               "account": "lab", "qos": "normal", "constraint": "a100|h100", "signal": "usr2",
               "signal_before_s": 300, "extra_sbatch": {"exclude": "node07", "exclusive": True}}
    opts = SlurmOptions.from_mapping(section, environ={})
    assert (opts.gpus_per_job, opts.cpus_per_task, opts.mem_gb, opts.time_min) == (2, 8, 32.0, 240)
    assert (opts.partition, opts.account, opts.qos, opts.constraint) == ("gpu", "lab", "normal", "a100|h100")
    assert (opts.signal, opts.signal_before_s) == ("USR2", 300)
    assert opts.extra_sbatch == {"exclude": "node07", "exclusive": True}
    env = {"ODCONV_SLURM_PARTITION": "debug", "ODCONV_SLURM_TIME_MIN": "30", "ODCONV_SLURM_MEM_GB": "1.5",
           "ODCONV_SLURM_ACCOUNT": "", "ODCONV_SLURM_EXTRA_SBATCH": "--exclude=node08 --exclusive",
           "ODCONV_SLURM_SIGNAL": "SIGUSR1"}
    over = SlurmOptions.from_mapping(section, environ=env)
    assert (over.partition, over.time_min, over.mem_gb, over.signal) == ("debug", 30, 1.5, "USR1")
    assert over.account == "lab"  # an empty variable does not override
    assert over.extra_sbatch == {"exclude": "node08", "exclusive": True}
    assert opts.with_overrides(partition="cpu", time_min=10).partition == "cpu"


@pytest.mark.parametrize("section, env, message", [
    ({"partitoin": "gpu"}, {}, "unknown key(s) ['partitoin']"),
    ({"time_min": 0}, {}, "slurm.time_min: must be an integer >= 1, got 0"),
    ({"time_min": "60"}, {}, "slurm.time_min: must be an integer >= 1, got '60'"),
    ({"gpus_per_job": True}, {}, "slurm.gpus_per_job: must be an integer >= 0, got True"),
    ({"mem_gb": -1}, {}, "slurm.mem_gb: must be a number of GiB > 0, got -1"),
    ({"partition": "two words"}, {}, "slurm.partition: must be a non-empty name without spaces, got 'two words'"),
    ({"signal": "KILL"}, {}, "slurm.signal: must be one of USR1, USR2, got 'KILL'"),
    ({"signal_before_s": 70000}, {}, "slurm.signal_before_s: must be at most 65535"),
    ({"time_min": 2}, {}, "slurm.signal_before_s: must be less than the time limit (time_min 2 = 120 s), got 120"),
    ({"signal_before_s": 300}, {"ODCONV_SLURM_TIME_MIN": "5"}, "(time_min 5 = 300 s), got 300"),
    ({"extra_sbatch": {"time": "10"}}, {}, "'time' is set by the launcher; use time_min instead"),
    ({"extra_sbatch": {"Bad Key": "x"}}, {}, "'Bad Key' is not an sbatch long option name"),
    ({}, {"ODCONV_SLURM_CPUS_PER_TASK": "four"}, "ODCONV_SLURM_CPUS_PER_TASK: must be an integer >= 1, got 'four'"),
    ({}, {"ODCONV_SLURM_PARTITON": "gpu"}, "unknown environment variable(s) ['ODCONV_SLURM_PARTITON']"),
    ({}, {"ODCONV_SLURM_EXTRA_SBATCH": "-x node1"}, "must be long options like --exclude=node07, got '-x'"),
    ("gpu", {}, "slurm: must be a mapping of options, got 'gpu'"),
])
def test_options_errors_name_the_bad_key_and_value(section, env, message):
    with pytest.raises(SlurmOptionsError) as e:
        SlurmOptions.from_mapping(section, environ=env)
    assert message in str(e.value)


def test_current_job_reads_the_slurm_environment():
    assert S.current_job({}) is None
    env = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gpu07", "SLURM_JOB_NODELIST": "gpu[07]",
           "SLURM_RESTART_COUNT": "2"}
    assert S.current_job(env) == S.CurrentJob(job_id="42", node="gpu07", restart_count=2)
    assert S.current_job({"SLURM_JOB_ID": "43", "SLURM_JOB_NODELIST": "cn1"}) == S.CurrentJob("43", "cn1", 0)


def test_stop_signal_is_the_jobs_warning_signal_only_inside_a_launched_job():
    assert S.stop_signal({}) is None
    assert S.stop_signal({"SUBMITIT_PREEMPT_SIGNAL": "USR1"}) is None  # not in a SLURM job
    assert S.stop_signal({"SLURM_JOB_ID": "7"}) is None                # a job not started by submit_jobs
    assert S.stop_signal({"SLURM_JOB_ID": "7", "SUBMITIT_PREEMPT_SIGNAL": "USR2"}) == signal.SIGUSR2
    assert S.stop_signal({"SLURM_JOB_ID": "7", "SUBMITIT_PREEMPT_SIGNAL": "SIGUSR1"}) == signal.SIGUSR1
    assert S.stop_signal({"SLURM_JOB_ID": "7", "SUBMITIT_PREEMPT_SIGNAL": "TERM"}) is None  # not a warning signal
    # what the launcher's jobs export: the signal the options ask for
    setup = SlurmOptions(signal="USR2").executor_parameters()["setup"]
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR2" in setup


def test_submit_jobs_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_jobs must be an integer >= 1, got 0"):
        S.submit_jobs(["true"], 0, SlurmOptions(), tmp_path)
    with pytest.raises(ValueError, match="argv must name a command"):
        S.submit_jobs([], 1, SlurmOptions(), tmp_path)


def fake_binaries(tmp_path: Path) -> Path:
    """A bin dir with stand-ins for every binary start_cluster needs: munged fails at start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in slurm_cluster_module.BINARIES:
        body = {"munged": 'echo "munged: Error: stand-in failure for the test" >&2; exit 1',
                "slurmd": 'echo "NodeName=fake CPUs=2 RealMemory=1000"'}.get(name, "exit 0")
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_start_cluster_says_why_it_cannot_start(tmp_path, monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="odconv-slurm-fail-"))
    try:
        monkeypatch.setenv("PATH", str(tmp_path))  # no binaries at all
        with pytest.raises(ClusterUnavailable, match="SLURM/MUNGE binaries not found: munged, slurmctld, slurmd"):
            start_cluster(root)
        monkeypatch.setenv("PATH", f"{fake_binaries(tmp_path)}:/usr/bin:/bin")
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(ClusterUnavailable, match="run as root; this is uid 1000"):
            start_cluster(root)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        with pytest.raises(ClusterUnavailable) as e:
            start_cluster(root)
        assert "munged exited with status 1 at start" in str(e.value)
        assert "munged: Error: stand-in failure for the test" in str(e.value)  # its output is in the reason
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- the real cluster

def wait_until(predicate, timeout_s: float, what: str, explain=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}. {explain()}")


def events(record: Path) -> list[tuple[str, str, str, int]]:
    """(event, job id, node, restart count) per line the recorder wrote."""
    if not record.exists():
        return []
    rows = [line.split("|") for line in record.read_text().splitlines() if line]
    return [(e, j, n, int(r)) for e, j, n, r in rows]


def state(job_id: str) -> S.JobStatus:
    (status,) = S.list_jobs([job_id])
    return status


def wait_ended(job_id: str, timeout_s: float, explain=lambda: "") -> S.JobStatus:
    """The job's status once the scheduler reports it ended."""
    def ended():
        status = state(job_id)
        return status if status.state in ENDED else None
    return wait_until(ended, timeout_s, f"job {job_id} to end", explain)


def submit_recorders(cluster: SlurmCluster, tmp_path: Path, n: int, release_now: bool, nested: bool = False,
                     **options) -> list[tuple[str, Path, Path]]:
    """Submit n recorder jobs (one record file each); (job id, record, release file) per job."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    opts = SlurmOptions.from_mapping({"time_min": 5, "signal_before_s": 20, **options}, environ={})
    out = []
    for i in range(n):
        record, release = tmp_path / f"record{i}.txt", tmp_path / f"release{i}"
        if release_now:
            release.touch()
        argv = [sys.executable, str(script), str(record), str(release)] + (["nested"] if nested else [])
        (job_id,) = S.submit_jobs(argv, 1, opts,
                                  tmp_path / "jobs", job_name=f"recorder{i}", cwd=tmp_path)
        out.append((job_id, record, release))
    return out


def explain_job(cluster: SlurmCluster, job_id: str, tmp_path: Path):
    def text() -> str:
        logs = "".join(p.read_text()[-1500:] for p in sorted((tmp_path / "jobs").glob(f"{job_id}/*_log.*")))
        show = cluster.run(["scontrol", "show", "job", job_id], check=False)
        return f"scontrol: {show.stdout or show.stderr}\nlogs: {logs}\nslurmd: {cluster.log_tail('slurmd')}"
    return text


@pytest.mark.integration
def test_cluster_has_this_hosts_cpus_and_memory_and_srun_answers(cluster):
    res = cluster.run(["srun", "--time=1", "hostname"], timeout=30)
    assert res.stdout.strip() == socket.gethostname()
    node = cluster.run(["scontrol", "-o", "show", "node", cluster.node]).stdout
    fields = dict(item.split("=", 1) for item in node.split() if "=" in item)
    assert int(fields["CPUTot"]) == os.cpu_count()
    mem_total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:"))
    assert abs(int(fields["RealMemory"]) - mem_total_kib / 1024) < 0.05 * mem_total_kib / 1024


@pytest.mark.integration
def test_submitit_job_returns_its_result(cluster, tmp_path):
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(time=2, cpus_per_task=1)
    job = executor.submit(S.current_job)
    wait_until(job.done, 30, f"submitit job {job.job_id}", explain_job(cluster, job.job_id, tmp_path / "submitit"))
    where = job.result()
    assert where.job_id == job.job_id and where.node == cluster.node and where.restart_count == 0
    assert wait_ended(job.job_id, 10).state == "COMPLETED"


@pytest.mark.integration
def test_launcher_runs_two_jobs_and_lists_their_states(cluster, tmp_path):
    jobs = submit_recorders(cluster, tmp_path, 2, release_now=True, mem_gb=0.25, time_min=3,
                            partition=cluster.partition)
    ids = [job_id for job_id, _, _ in jobs]
    assert len(set(ids)) == 2 and S.job_ids_in(tmp_path / "jobs") == ids
    for job_id, record, _ in jobs:
        wait_ended(job_id, 30, explain_job(cluster, job_id, tmp_path))
        assert events(record) == [("start", job_id, cluster.node, 0), ("done", job_id, cluster.node, 0)]
    # 999999: an id the controller never had (squeue does not know it; this cluster has no sacct)
    assert [(s.job_id, s.state, s.node, s.source) for s in S.list_jobs([*ids, "999999"])] == [
        (ids[0], "COMPLETED", cluster.node, "squeue"), (ids[1], "COMPLETED", cluster.node, "squeue"),
        ("999999", "UNKNOWN", "", "none")]
    # what the controller was asked for: requeue allowed, the warning signal, limits, partition
    show = cluster.run(["scontrol", "-o", "show", "job", ids[0]]).stdout
    fields = dict(item.split("=", 1) for item in show.split() if "=" in item)
    assert fields["Requeue"] == "1" and fields["TimeLimit"] == "00:03:00"
    assert fields["Partition"] == cluster.partition and fields["MinMemoryNode"] == "256M"
    script = (tmp_path / "jobs" / ids[0] / f"{ids[0]}_submission.sh").read_text()
    assert "#SBATCH --signal=USR1@20" in script.splitlines()


@pytest.mark.integration
def test_signalled_job_and_requeued_job_each_run_again(cluster, tmp_path):
    # two jobs at once (the node has 2 CPUs): one gets the warning signal, the other is requeued;
    # the recorders run as grandchildren of the wrapper, as a worker's trial processes will
    (signalled, sig_record, sig_release), (requeued, rq_record, rq_release) = submit_recorders(
        cluster, tmp_path, 2, release_now=False, nested=True)
    explain = {signalled: explain_job(cluster, signalled, tmp_path), requeued: explain_job(cluster, requeued, tmp_path)}
    for job_id, record in ((signalled, sig_record), (requeued, rq_record)):
        wait_until(lambda record=record: events(record), 30, f"job {job_id}'s start", explain[job_id])
    cluster.run(["scancel", "--signal=USR1", signalled])
    cluster.run(["scontrol", "requeue", requeued])
    for job_id, record in ((signalled, sig_record), (requeued, rq_record)):
        wait_until(lambda record=record: [e for e in events(record) if e[0] == "start"][1:], 40,
                   f"job {job_id}'s second start", explain[job_id])
    # the grandchild got USR1 from SLURM itself (its parent ignores it) and exited; the wrapper
    # then requeued the job
    assert events(sig_record) == [("start", signalled, cluster.node, 0), ("signal SIGUSR1", signalled, cluster.node, 0),
                                  ("start", signalled, cluster.node, 1)]
    # `scontrol requeue` stopped the first run with SIGTERM (SIGKILL follows after KillWait)
    assert events(rq_record) == [("start", requeued, cluster.node, 0), ("signal SIGTERM", requeued, cluster.node, 0),
                                 ("start", requeued, cluster.node, 1)]
    assert [(s.state, s.restarts) for s in S.list_jobs([signalled, requeued])] == [("RUNNING", 1), ("RUNNING", 1)]
    sig_release.touch()
    rq_release.touch()
    for job_id, record in ((signalled, sig_record), (requeued, rq_record)):
        assert wait_ended(job_id, 30, explain[job_id]).state == "COMPLETED"
        assert events(record)[3:] == [("done", job_id, cluster.node, 1)]


@pytest.mark.integration
def test_cancelled_job_ends_cancelled_and_a_failing_command_ends_failed(cluster, tmp_path):
    ((job_id, record, _),) = submit_recorders(cluster, tmp_path, 1, release_now=False)
    short = SlurmOptions.from_mapping({"time_min": 2, "signal_before_s": 20}, environ={})
    (failing,) = S.submit_jobs([sys.executable, "-c", "raise SystemExit(3)"], 1, short, tmp_path / "jobs")
    explain = explain_job(cluster, job_id, tmp_path)
    wait_until(lambda: events(record), 30, "the job's start", explain)
    cluster.run(["scancel", job_id])
    ended = wait_ended(job_id, 30, explain)
    assert ended.state == "CANCELLED" and ended.restarts == 0
    assert events(record) == [("start", job_id, cluster.node, 0), ("signal SIGTERM", job_id, cluster.node, 0)]
    failed = wait_ended(failing, 30, explain_job(cluster, failing, tmp_path))
    assert (failed.state, failed.restarts) == ("FAILED", 0)
    assert "returned non-zero exit status 3" in next((tmp_path / "jobs" / failing).glob("*_log.err")).read_text()


@pytest.mark.integration
def test_list_jobs_without_accounting_reports_unknown_for_ids_squeue_lacks(cluster):
    (status,) = S.list_jobs(["999999"])
    assert (status.state, status.source) == ("UNKNOWN", "none")
    assert "not in squeue; sacct: Slurm accounting storage is disabled" in status.reason


@pytest.mark.integration
def test_a_second_cluster_stops_with_a_running_job_and_leaves_no_process(slurm_cluster):
    # needs the session cluster's start to have worked (skips with its reason otherwise)
    root = Path(tempfile.mkdtemp(prefix="odconv-slurm-stop-"))
    try:
        second = start_cluster(root)
        daemons = {p.pid for p in second.processes.values()}
        # a job far longer than the test (stop() cancels it): it is still running when the test acts
        second.run(["sbatch", "--wrap", "sleep 600", "-o", str(root / "sleep.out")], timeout=30)
        wait_until(lambda: second.run(["squeue", "-h", "-o", "%t"]).stdout.split() == ["R"], 30, "the job to run")
        stepds = set(stepd_pids_under(root))
        assert stepds, "a running batch job has a slurmstepd"
        second.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pgrep = subprocess.run(["pgrep", "-d,", "munged|slurmctld|slurmd|slurmstepd"], capture_output=True, text=True)
    # an ended slurmstepd may stay a zombie until PID 1 (its parent) reaps it: dead, not left running
    alive = {int(p) for p in pgrep.stdout.strip().split(",") if p and not is_zombie(int(p))}
    assert not (daemons | stepds) & alive, pgrep.stdout
    assert slurm_cluster.run(["scontrol", "ping"]).returncode == 0  # the other cluster is untouched


def is_zombie(pid: int) -> bool:
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces, the state follows the last ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


@pytest.mark.integration
def test_start_cluster_refuses_a_directory_munged_cannot_use(slurm_cluster, tmp_path):
    # (needs the binaries and root, as the session cluster does) pytest's tmp_path lies under a 0700
    # directory: munged could not serve a socket there
    with pytest.raises(ClusterUnavailable, match="munged needs execute permission for all"):
        start_cluster(tmp_path / "c")
