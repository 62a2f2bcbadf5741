"""A real one-node SLURM cluster in a temporary directory, for tests (and by hand).

`start_cluster(root)` writes a ``slurm.conf`` that names this host as controller and only
compute node (its real CPU topology and memory from ``slurmd -C``), creates a MUNGE key,
starts ``munged``, ``slurmctld`` and ``slurmd`` as root with every socket, state, spool,
log and pid file under ``root`` and free TCP ports, and waits until ``sinfo`` shows the
node idle. Nothing under /etc is read or written: the daemons get the config with ``-f``
and the clients through ``SLURM_CONF`` in `SlurmCluster.env`; MUNGE runs on its own socket
(``AuthInfo=socket=...``), so a system munged, if any, is left alone.

`SlurmCluster.stop()` cancels every job, waits for the job steps to end, then stops the
daemons it started (by their process ids) and checks that none of them, and no
``slurmstepd`` of this cluster, is left.

Run by hand (as root)::

    .venv/bin/python -m tests.slurm_cluster /tmp/slurm-test   # prints `export SLURM_CONF=...`,
                                                              # stops on Ctrl-C

The pytest fixture `slurm_cluster_fixture` (registered as ``slurm_cluster``, session scope)
skips with the reason when the cluster cannot start: binaries missing, not root, or a
daemon that fails (with the tail of its log).
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sweeps.slurm_options import ENV_PREFIX

BINARIES = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
# A requeued job may not start again before its job credential expires (slurm.conf AuthInfo
# cred_expire, 120 s by default); a few seconds keep the requeue tests short.
CRED_EXPIRE_S = 5


class ClusterUnavailable(RuntimeError):
    """The cluster cannot start here; the message says why (with a daemon's log tail)."""


@dataclass
class SlurmCluster:
    """A running one-node cluster. `env` is os.environ plus SLURM_CONF for client commands."""

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    memory_mb: int
    env: dict[str, str]
    logs: dict[str, Path]
    consoles: dict[str, Path]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, argv: Sequence[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; output as text."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check)

    def job_ids(self) -> list[str]:
        """Ids of every job the controller still knows (pending, running, recently ended)."""
        out = self.run(["squeue", "-h", "--states=all", "-o", "%i"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def active_job_ids(self) -> list[str]:
        """Ids of jobs not yet ended (pending, running, completing, requeued, suspended ...)."""
        out = self.run(["squeue", "-h", "-o", "%i"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a daemon's console output and of its log file."""
        return f"{_tail(self.consoles[name], lines)}\n{_tail(self.logs[name], lines)}".strip()

    def stop(self, timeout: float = 20) -> None:
        """Cancel all jobs, stop the daemons; raise RuntimeError if any process of the cluster is left."""
        deadline = time.monotonic() + timeout
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            try:
                active = self.active_job_ids()
                if active:
                    self.run(["scancel", *active], check=False)
                while self.active_job_ids() and time.monotonic() < deadline:
                    time.sleep(0.2)
            except (subprocess.SubprocessError, OSError):
                pass  # the controller is unreachable: stopping the daemons below still ends the steps
        stepds_before = stepd_pids_under(self.root)
        # The compute daemon first (it ends its job steps), the controller, then MUNGE they both use.
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        left = [f"{name} (pid {p.pid})" for name, p in self.processes.items() if p.poll() is None]
        while stepd_pids_under(self.root) and time.monotonic() < deadline + 5:
            time.sleep(0.2)
        left += [f"slurmstepd (pid {pid})" for pid in stepd_pids_under(self.root)]
        if left:
            raise RuntimeError(f"SLURM processes left after stop: {left} (steps before stop: {stepds_before})")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log {path}: {e})"


def stepd_pids_under(root: Path) -> list[int]:
    """Pids of slurmstepd processes whose working directory is under `root` (this cluster's spool)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "slurmstepd":
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if Path(cwd).is_relative_to(root):
            pids.append(int(entry.name))
    return pids


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_hardware() -> dict[str, str]:
    """This host's node line as slurmd detects it: CPUs, Boards, SocketsPerBoard, CoresPerSocket,
    ThreadsPerCore, RealMemory (MiB)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    first = out.splitlines()[0]
    fields = dict(item.split("=", 1) for item in first.split())
    fields.pop("NodeName", None)
    return fields


def _write_conf(root: Path, node: str, hardware: dict[str, str], ctld_port: int, slurmd_port: int,
                fake_gpus: int = 0) -> Path:
    dirs = {name: root / name for name in ("state", "spool", "log", "run", "munge")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (root / "plugstack.conf").write_text("")  # no SPANK plugins from /etc/slurm
    node_hw = " ".join(f"{k}={v}" for k, v in hardware.items())
    gres = ""
    if fake_gpus:
        # GPUs that are plain files: SLURM schedules and binds them (CUDA_VISIBLE_DEVICES, the
        # job's GRES index) without any device behind them
        for i in range(fake_gpus):
            (root / f"fakegpu{i}").touch()
        (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={root}/fakegpu[0-{fake_gpus - 1}]\n")
        node_hw += f" Gres=gpu:{fake_gpus}"
        gres = "GresTypes=gpu\n"
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=odconvtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dirs['munge'] / 'munge.socket'},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={dirs['state']}
SlurmdSpoolDir={dirs['spool']}
SlurmctldPidFile={dirs['run'] / 'slurmctld.pid'}
SlurmdPidFile={dirs['run'] / 'slurmd.pid'}
SlurmctldLogFile={dirs['log'] / 'slurmctld.log'}
SlurmdLogFile={dirs['log'] / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root / 'plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# seconds from SIGTERM to SIGKILL when a job is cancelled or requeued
KillWait=2
# ended jobs stay visible to squeue this long
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
{gres}NodeName={node} NodeAddr=127.0.0.1 {node_hw} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def start_cluster(root: Path, timeout: float = 30, fake_gpus: int = 0) -> SlurmCluster:
    """Start the cluster with all its files under `root` (created); raise ClusterUnavailable.
    ``fake_gpus``: the node offers that many GPUs (GRES ``gpu``) backed by plain files."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise ClusterUnavailable(f"SLURM/MUNGE binaries not found: {', '.join(missing)} "
                                 "(Debian packages slurm-wlm and munge)")
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"the test cluster's daemons run as root; this is uid {os.geteuid()}")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged refuses a socket or key in a group/world-writable directory
    # munged also wants every directory above its socket searchable by all (pytest's tmp_path is not)
    closed = [p for p in root.parents if not p.stat().st_mode & 0o001]
    if closed:
        raise ClusterUnavailable(f"munged needs execute permission for all on every directory above its socket; "
                                 f"{closed[0]} has mode {oct(closed[0].stat().st_mode & 0o777)}: "
                                 "use a directory like tempfile.mkdtemp() under /tmp")
    node = socket.gethostname().split(".")[0]
    try:
        hardware = _node_hardware()
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        raise ClusterUnavailable(f"`slurmd -C` failed: {e}") from e
    ctld_port, slurmd_port = _free_ports(2)
    conf = _write_conf(root, node, hardware, ctld_port, slurmd_port, fake_gpus)
    munge_dir = root / "munge"
    munge_dir.chmod(0o755)  # clients must reach the socket: execute permission for all
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    logs = {"munged": root / "log" / "munged.log", "slurmctld": root / "log" / "slurmctld.log",
            "slurmd": root / "log" / "slurmd.log"}
    consoles = {name: root / "log" / f"{name}.console" for name in logs}  # what a daemon prints before its log
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(root=root, conf=conf, node=node, partition=PARTITION,
                           cpus=int(hardware.get("CPUs", "1")), memory_mb=int(hardware.get("RealMemory", "1")),
                           env=env, logs=logs, consoles=consoles)
    commands = {
        "munged": ["munged", "--foreground", f"--socket={munge_dir / 'munge.socket'}", f"--key-file={key}",
                   f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
                   f"--log-file={logs['munged']}"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", node],
    }
    deadline = time.monotonic() + timeout
    try:
        for name, argv in commands.items():
            # Own session: a Ctrl-C in the caller's terminal does not reach the daemons.
            with consoles[name].open("wb") as console:
                cluster.processes[name] = subprocess.Popen(argv, env=env, cwd=root, stdin=subprocess.DEVNULL,
                                                           stdout=console, stderr=subprocess.STDOUT,
                                                           start_new_session=True)
            if name == "munged":
                _wait_for(lambda: (munge_dir / "munge.socket").exists(), cluster, name, deadline)
            elif name == "slurmctld":
                _wait_for(lambda: cluster.run(["scontrol", "ping"], check=False).returncode == 0,
                          cluster, name, deadline)
        _wait_for(lambda: _node_state(cluster) == "idle", cluster, "slurmd", deadline)
    except BaseException:
        try:
            cluster.stop(timeout=10)
        except RuntimeError:
            pass
        raise
    return cluster


def _node_state(cluster: SlurmCluster) -> str:
    out = cluster.run(["sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t"], check=False).stdout
    return out.strip()


def _wait_for(ready, cluster: SlurmCluster, daemon: str, deadline: float) -> None:
    """Poll `ready()` until true; ClusterUnavailable (with the daemon's log tail) if it exits or time runs out."""
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with status {proc.returncode} at start; "
                                         f"its output and log {cluster.logs[name]}:\n{cluster.log_tail(name)}")
        try:
            if ready():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        time.sleep(0.1)
    raise ClusterUnavailable(f"{daemon} not ready within the start timeout; "
                             f"log {cluster.logs[daemon]}:\n{cluster.log_tail(daemon)}")


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
    """A running cluster for the test session (skips with the reason where it cannot start)."""
    root = Path(tempfile.mkdtemp(prefix="odconv-slurm-"))
    root.chmod(0o755)
    try:
        cluster = start_cluster(root, fake_gpus=2)  # GPUs for the GPU-job test: plain files
    except ClusterUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no local SLURM test cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(name="cluster")
def cluster_fixture(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmCluster]:
    """The session's cluster, with SLURM_CONF set for this test only (sbatch passes it on to
    jobs) and no ODCONV_SLURM_* override from the environment; a failed test's jobs are
    cancelled afterwards, so they do not hold the node's CPUs for the next test."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    yield slurm_cluster
    left = slurm_cluster.active_job_ids()
    if left:
        slurm_cluster.run(["scancel", *left], check=False)
        deadline = time.monotonic() + 30
        while slurm_cluster.active_job_ids():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs {left} still not ended 30 s after scancel")
            time.sleep(0.2)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.slurm_cluster DIR", file=sys.stderr)
        return 2
    try:
        cluster = start_cluster(Path(argv[0]))
    except ClusterUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={cluster.conf}\n# node {cluster.node}: {cluster.cpus} CPUs, "
          f"{cluster.memory_mb} MiB; Ctrl-C stops the cluster", flush=True)
    # the daemons run in their own sessions: stop them on Ctrl-C and on SIGTERM alike
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
