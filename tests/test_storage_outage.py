"""Storage outages: a sweep rides through a storage that is away for a while, and stops with a
one-line message only when it stays away longer than the outage limit.

The outages are real: the journal file made unwritable, and a PostgreSQL server that the test
starts itself (on a free port) and stops and restarts mid-sweep. The mid-sweep tests hold their
trials at the start of epoch 1 (tests/fit_gate.py) until the storage is away, so that the trial
they watch finishes during the outage, not before it. Those two are in the integration tier."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState

from sweeps.definition import load_sweep, parse_sweep
from sweeps.record import TrialRecord, read_record, write_record
from sweeps.running import grid_queue as Q
from sweeps.running import liveness
from sweeps.running import study as S
from sweeps.running.storage import DEFAULT_OUTAGE_LIMIT_S, OutageGuard, StorageUnavailable, is_transient, make_storage
from tests.conftest import wait_for
from tests.fit_gate import held_pids, hold_at_epoch

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")


def _raw(**kw):
    d = {"name": "t", "base_config": BASE, "grid": {"conv": ["static"], "seed": [0, 1]}}
    d.update(kw)
    return d


def _guard_lines(caplog) -> tuple[list[str], list[str]]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "sweeps"]
    return [m for m in msgs if "unreachable" in m], [m for m in msgs if "reachable again" in m]


# --- what counts as an outage ------------------------------------------------------------------

def test_transient_errors_are_connection_and_file_access_trouble():
    import sqlalchemy.exc as sa

    def wrapped(cause: BaseException) -> StorageInternalError:
        try:
            raise StorageInternalError("commit failed") from cause
        except StorageInternalError as e:
            return e

    refused = sa.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert is_transient(refused) and is_transient(wrapped(refused))
    assert not is_transient(wrapped(sa.DataError("INSERT", {}, Exception("value too long"))))
    # a query retried in the session whose connection had dropped (optuna's _get_trials does so)
    def after(first: BaseException) -> StorageInternalError:
        try:
            try:
                raise first
            except sa.SQLAlchemyError:
                raise sa.PendingRollbackError("Can't reconnect until invalid transaction is rolled back") from None
        except sa.PendingRollbackError as pending:
            return wrapped(pending)

    assert is_transient(after(refused))
    assert not is_transient(after(sa.IntegrityError("INSERT", {}, Exception("duplicate key"))))
    assert not is_transient(wrapped(sa.PendingRollbackError("no earlier error")))
    assert is_transient(PermissionError(1, "Operation not permitted"))
    assert not is_transient(FileNotFoundError(2, "No such file or directory"))
    assert not is_transient(KeyError("study"))
    assert not is_transient(optuna.exceptions.UpdateFinishedTrialError("finished"))


class FakeTime:
    """An outage guard's clock and sleep: sleeping moves the clock on at once, and may do what
    the test waits for (``on_sleep``: the storage coming back), so nothing waits in real time."""

    def __init__(self, on_sleep=None):
        self.now, self.slept, self.on_sleep = 100.0, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s
        if self.on_sleep is not None:
            self.on_sleep()

    def guard(self, label: str = "test", **kw) -> OutageGuard:
        return OutageGuard(label, clock=self.clock, sleep=self.sleep, **kw)


class Flaky:
    """Fails with a connection error for the first ``n`` calls, then returns the call count."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.n:
            raise PermissionError(13, "Permission denied")
        return self.calls


def test_guard_retries_logs_one_line_each_way_and_gives_up_after_the_limit(caplog):
    caplog.set_level(logging.INFO, logger="sweeps")
    t = FakeTime()
    g = t.guard("x", limit_s=30, max_delay_s=0.05)
    f = Flaky(4)
    assert g.call(f) == 5 and g.outages == 1
    assert len(t.slept) == 4  # one wait after each failed call
    down, up = _guard_lines(caplog)
    assert len(down) == 1 and len(up) == 1  # 4 failed calls, one outage: one line down, one back
    t.now += 7.0
    assert g.seconds_since_outage() == pytest.approx(7.0)  # the outage ended during the call
    # not transient: raised at once, not retried
    with pytest.raises(KeyError):
        g.call(lambda: {}["missing"])
    # an outage longer than the limit
    t2 = FakeTime()
    g2 = t2.guard("y", limit_s=0.3, max_delay_s=0.05)
    with pytest.raises(StorageUnavailable, match=r"unreachable for .* \(limit 0 s"):
        g2.call(Flaky(10**9))  # fails for ever: only the limit ends the call
    assert sum(t2.slept) >= 0.3 and t2.now - 100.0 == pytest.approx(sum(t2.slept))
    # no_wait: a progress line does not wait; a stop request ends the wait
    waited = len(t2.slept)
    with g2.no_wait(), pytest.raises(StorageUnavailable):
        g2.call(Flaky(1))
    assert len(t2.slept) == waited
    stop = FakeTime().guard("z", limit_s=60, should_stop=lambda: True)
    with pytest.raises(StorageUnavailable, match="stopped"):
        stop.call(Flaky(10**9))


def test_a_read_does_not_end_an_outage_of_writes(caplog):
    """A journal file that cannot be written can still be read: the outage lasts until a write works."""
    caplog.set_level(logging.INFO, logger="sweeps")
    t = FakeTime()
    g = t.guard("j", limit_s=30)
    assert not g.try_once(Flaky(1))              # a heartbeat write fails: the outage starts
    t.now += 5.0
    assert g.call(lambda: "read", write=False) == "read"
    assert g.seconds_since_outage() == 0.0       # still down
    g.call(lambda: None)                          # a write works: over
    t.now += 2.0
    assert g.seconds_since_outage() == pytest.approx(2.0)
    down, up = _guard_lines(caplog)
    assert len(down) == 1 and len(up) == 1


# --- journal file briefly unwritable ---------------------------------------------------------

def _journal_study(tmp_path, raw=None, guard: OutageGuard | None = None):
    sw = parse_sweep(raw or _raw())
    st = S.create_study(make_storage(None, sw.name, tmp_path, guard), sw.name)
    Q.enqueue_grid(st, sw)
    return sw, st


def test_journal_unwritable_for_a_while_tell_waits_and_succeeds(tmp_path, freezable, caplog):
    caplog.set_level(logging.INFO, logger="sweeps")
    t = FakeTime()
    sw, st = _journal_study(tmp_path, guard=t.guard("journal"))
    trial = Q.pop_waiting(st)
    journal = freezable(tmp_path / "t" / "optuna.journal")
    journal.freeze()
    t.on_sleep = journal.thaw  # the file comes back while the guard waits for it
    trial.set_user_attr("value_written_during_outage", 1)
    st.tell(trial, 0.75)
    assert t.slept  # it did wait for the file
    fresh = S.load_study(make_storage(None, sw.name, tmp_path), sw.name)
    done = fresh.trials[trial.number]
    assert done.state == TrialState.COMPLETE and done.value == 0.75
    assert done.user_attrs["value_written_during_outage"] == 1
    down, up = _guard_lines(caplog)
    assert len(down) == 1 and len(up) == 1, down + up


def test_journal_unwritable_longer_than_the_limit_raises(tmp_path, freezable):
    sw, st = _journal_study(tmp_path)
    trial = Q.pop_waiting(st)
    t = FakeTime()
    st2 = S.load_study(make_storage(None, sw.name, tmp_path, t.guard("journal", limit_s=1)), sw.name)  # a 1 s limit
    journal = freezable(tmp_path / "t" / "optuna.journal")
    journal.freeze()
    try:
        with pytest.raises(StorageUnavailable, match="SWEEP_OUTAGE_LIMIT_S"):
            st2.tell(trial.number, 0.5)
    finally:
        journal.thaw()
    assert sum(t.slept) >= 1.0  # it waited out the limit (in the guard's time)
    assert st.trials[trial.number].state == TrialState.RUNNING  # nothing half-written


# --- a dead worker's finished trial is reported, not retrained ----------------------------------

def test_reap_reports_a_finished_record_of_a_dead_worker(tmp_path):
    sw, st = _journal_study(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    finished, stale = Q.pop_waiting(st), Q.pop_waiting(st)
    for t, number in ((finished, finished.number), (stale, stale.number + 100)):
        path = tmp_path / f"rec{t.number}.json"
        p = Q.trial_point(st.trials[t.number]).params
        write_record(path, TrialRecord(sweep="t", grid_key=t.user_attrs["grid_key"], variant="static", params=p,
                                       seed=p["seed_everything"], status="complete", metric="test/acc_top1",
                                       value=0.625, trial_number=number))
        for k, v in {"claimed_at": time.time(), "worker_host": S.HOST, "worker_pid": dead.pid,
                     "record_path": str(path)}.items():
            t.set_user_attr(k, v)
    assert sorted(liveness.reap(st, sw)) == sorted([finished.number, stale.number])
    done = st.trials[finished.number]
    assert done.state == TrialState.COMPLETE and done.value == 0.625
    assert done.user_attrs["record"]["value"] == 0.625
    # the other record is an earlier attempt's (another trial number): that trial is retried
    assert st.trials[stale.number].state == TrialState.FAIL
    retries = [t for t in st.get_trials() if t.user_attrs.get("retry_of") is not None]
    assert [t.user_attrs["retry_of"] for t in retries] == [stale.number]
    assert not [t for t in st.get_trials() if t.user_attrs.get("retry_of") == finished.number]


# --- real sweeps through real outages ----------------------------------------------------------

FAST = {"trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1,
        "data.init_args.num_train": 160, "data.init_args.num_test": 32}
# the least time the PostgreSQL server stays down (SWEEP_TEST_OUTAGE_S=60 for the long end)
OUTAGE_S = float(os.environ.get("SWEEP_TEST_OUTAGE_S", "10"))
MEASURE = {"repeats": 1, "latency_batch_sizes": [1], "throughput_batch_size": 8}


def _sweep(tmp_path: Path, name: str, seeds: list[int], epochs: int) -> tuple[Path, Path]:
    """The sweep file, and the gate (created here) at which its fits hold at the start of epoch 1."""
    gate = tmp_path / f"{name}.gate"
    gate.touch()
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base_config": BASE, "grid": {"conv": ["static"], "seed": seeds},
                                 "overrides": {**FAST, "trainer.max_epochs": epochs,
                                               "trainer.callbacks": [hold_at_epoch(gate)]},
                                 "measure": MEASURE}))
    return p, gate


# the sweep driver as `odconv-sweep run` runs it, its workers beating their trials' heartbeats every 2 s
DRIVER = """
import logging, sys
import optuna
from sweeps.definition import load_sweep
from sweeps.running.runner import run_sweep
logging.basicConfig(level=logging.INFO, format="[sweep] %(message)s")
optuna.logging.set_verbosity(optuna.logging.WARNING)
sweep_yaml, root, workers, storage, limit_s = sys.argv[1:]
sys.exit(run_sweep(load_sweep(sweep_yaml), storage or None, int(workers), "cpu", results_root=root,
                   progress_interval=1, outage_limit_s=float(limit_s), heartbeat_s=2.0))
"""


def _driver(sweep_yaml: Path, root: Path, workers: int, storage: str | None = None,
            limit_s: float = DEFAULT_OUTAGE_LIMIT_S) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    for k in ("STORAGE", "WORKERS", "DEVICES_PER_TRIAL", "STUDY"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(sweep_yaml), str(root), str(workers), storage or "",
                             str(limit_s)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _held_trial(st_fn, gate: Path):
    """The RUNNING trial whose fit is held first at ``gate``, or None (before the storage shows it)."""
    def check():
        pid = held_pids(gate).get(0)
        if pid is None:
            return None
        try:
            st = st_fn()
        except KeyError:  # the driver has not created the study yet
            return None
        return next((t for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.user_attrs.get("trial_pid") == pid), None)
    return check


def _record_of(root: Path, name: str, t) -> Path:
    return root / name / "trials" / f"{Q.trial_point(t).slug}.json"


def _finished_on_disk(path: Path, number: int):
    def check():
        try:
            return path.exists() and read_record(path).trial_number == number
        except (OSError, ValueError):
            return False
    return check


@pytest.mark.integration
def test_postgres_restart_mid_sweep_loses_no_trial(tmp_path, pg_server):
    """Two workers on a PostgreSQL server that goes away mid-sweep for >= 10 s -- long enough for
    a trial to finish meanwhile -- and comes back: the sweep completes in the same run, every
    point once, no trial failed or retried, no traceback."""
    name = "pgout"
    sw_yaml, gate = _sweep(tmp_path, name, [0, 1, 2, 3], epochs=3)
    keys = [p.key for p in load_sweep(sw_yaml).points()]

    def study():
        return S.load_study(make_storage(pg_server.url, name, tmp_path, OutageGuard("test", limit_s=5)), name)

    drv = _driver(sw_yaml, tmp_path, 2, pg_server.url)
    try:
        try:
            victim = wait_for(_held_trial(study, gate), 300, "a trial held in training")
            pg_server.stop()
            down_at = time.monotonic()
        finally:
            gate.unlink()  # the held trials go on while the server is down
        # the server stays away until the trial has finished and written its record to disk
        wait_for(_finished_on_disk(_record_of(tmp_path, name, victim), victim.number), 300,
                 "the trial to finish while the server is down")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        outage_s = time.monotonic() - down_at
        pg_server.start()
        out, _ = drv.communicate(timeout=600)
    finally:
        if drv.poll() is None:
            drv.kill()
    print(f"server down for {outage_s:.1f} s; driver output:\n{out}")  # shown with pytest -rP
    assert drv.returncode == 0, out
    assert outage_s >= OUTAGE_S
    st = study()
    trials = st.get_trials()
    assert sorted(t.user_attrs["grid_key"] for t in trials if t.state == TrialState.COMPLETE) == sorted(keys)
    assert len(trials) == len(keys), [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials]
    assert st.trials[victim.number].state == TrialState.COMPLETE  # reported when the server came back
    assert "Traceback" not in out and "OperationalError" in out  # the cause, on one line per outage
    assert 1 <= out.count("unreachable (") <= 3 * 2, out  # at most one line per process (driver, 2 workers)


@pytest.mark.integration
def test_journal_away_longer_than_the_limit_stops_then_resumes_without_retraining(tmp_path, freezable):
    name = "jout"
    sw_yaml, gate = _sweep(tmp_path, name, [0], epochs=3)
    keys = [p.key for p in load_sweep(sw_yaml).points()]

    def study():
        return S.load_study(make_storage(None, name, tmp_path), name)

    drv = _driver(sw_yaml, tmp_path, 1, limit_s=4)
    try:
        try:
            victim = wait_for(_held_trial(study, gate), 300, "a trial held in training")
            journal = freezable(tmp_path / name / "optuna.journal")
            journal.freeze()
        finally:
            gate.unlink()  # the held trial goes on while the journal is away
        try:
            record = _record_of(tmp_path, name, victim)
            wait_for(_finished_on_disk(record, victim.number), 300, "the trial to finish while the journal is away")
            out, _ = drv.communicate(timeout=120)
        finally:
            journal.thaw()
    finally:
        if drv.poll() is None:
            drv.kill()
    print(f"driver output:\n{out}")  # shown with pytest -rP
    assert drv.returncode == 3, out
    assert "Traceback" not in out
    stop_lines = [line for line in out.splitlines() if line.startswith("[sweep] stopped")]
    assert len(stop_lines) == 1 and "run the same command again" in stop_lines[0], out
    assert study().trials[victim.number].state == TrialState.RUNNING
    mtime = record.stat().st_mtime
    # the storage is back: the same command finishes the sweep; the finished trial is reported, not rerun
    r = _driver(sw_yaml, tmp_path, 1)
    out2, _ = r.communicate(timeout=600)
    assert r.returncode == 0, out2
    st = study()
    assert st.trials[victim.number].state == TrialState.COMPLETE
    assert st.trials[victim.number].value == read_record(record).value and record.stat().st_mtime == mtime
    assert sorted(t.user_attrs["grid_key"] for t in st.get_trials() if t.state == TrialState.COMPLETE) == sorted(keys)
    assert len(st.get_trials()) == len(keys)  # nothing retried
