"""End-to-end sweep runs: real (tiny) Lightning fits in worker subprocesses on CPU.

Each test writes a small sweep over experiments/smoke.yaml (synthetic data, tiny model, one
or a few epochs of 2 batches) into a temporary results root and runs the real command
(``python -m sweeps run ...``). A test that acts while a trial runs first holds the trial's fit
at the start of an epoch (tests/fit_gate.py: the fit sleeps while a gate file exists), waits
until the storage shows that trial RUNNING in the held process, acts, and only then deletes
the gate: the trial cannot finish before the test has acted, however slow the machine.

Integration tier (``make test-integration``): subprocess sweeps with real fits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from sweeps.definition import load_sweep
from sweeps.record import read_record
from sweeps.running import grid_queue as Q
from sweeps.running import study as S
from sweeps.running.storage import make_storage, rdb_url
from tests.conftest import wait_for
from tests.fit_gate import held_pids, hold_at_epoch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")
PG_URL = os.environ.get("SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAST = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1, "data.init_args.num_train": 160, "data.init_args.num_test": 32}
MEASURE = {"repeats": 1, "latency_batch_sizes": [1], "throughput_batch_size": 8}


def write_sweep(tmp_path: Path, name: str, grid: dict, overrides: dict | None = None, **extra) -> Path:
    d = {"name": name, "base_config": BASE, "overrides": {**FAST, **(overrides or {})}, "grid": grid,
         "measure": MEASURE, **extra}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def env() -> dict:
    e = dict(os.environ)
    e.update(CUDA_VISIBLE_DEVICES="", GPUS="cpu", PYTHONUNBUFFERED="1")
    for k in ("STORAGE", "WORKERS", "DEVICES_PER_TRIAL", "STUDY", "LAUNCHER", "SLURM_JOBS", "SLURM_JOB_ID",
              "SUBMITIT_PREEMPT_SIGNAL"):
        e.pop(k, None)
    return e


def run_cmd(sweep_yaml: Path, root: Path, *args: str, timeout: float = 600, background: bool = False):
    cmd = [sys.executable, "-m", "sweeps", "run", str(sweep_yaml), "--results-root", str(root),
           "--progress-interval", "1", *args]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@contextmanager
def background(sweep_yaml: Path, root: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``run_cmd(..., background=True)``; on the way out (a failed assertion included) the
    driver's process group is killed if it still runs, so that no held trial outlives the test."""
    drv = run_cmd(sweep_yaml, root, *args, background=True)
    try:
        yield drv
    finally:
        if drv.poll() is None:
            os.killpg(drv.pid, signal.SIGKILL)
            drv.communicate()


@pytest.fixture
def gate(tmp_path) -> Iterator[Path]:
    """A gate file (tests/fit_gate.py), removed at the end whatever happened."""
    g = tmp_path / "fit.gate"
    g.touch()
    yield g
    g.unlink(missing_ok=True)


def study_of(name: str, root: Path, storage: str | None = None, study: str | None = None) -> optuna.Study:
    return S.load_study(make_storage(storage, name, root), study or name)


def assert_each_point_once(st: optuna.Study, keys: list[str]) -> dict[str, optuna.trial.FrozenTrial]:
    complete = [t for t in st.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    counts = Counter(t.user_attrs["grid_key"] for t in complete)
    assert sorted(counts) == sorted(keys), counts
    assert all(c == 1 for c in counts.values()), counts
    return {t.user_attrs["grid_key"]: t for t in complete}


def test_sweep_end_to_end_tables_plots_each_point_once(tmp_path):
    rerun_options = {"width": 0.125, "strategy": "grouped"}  # smoke.yaml's width, another kernel strategy
    sw_yaml = write_sweep(tmp_path, "e2e", {"conv": ["static", "odconv1x-channel", "odconv4x-kernel"], "seed": [0, 1]},
                          reruns={"points": {"conv": ["odconv1x-channel"], "seed": [0]},
                                  "overrides": {"model.model_options": rerun_options}})
    r = run_cmd(sw_yaml, tmp_path, "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = load_sweep(sw_yaml)
    keys = [p.key for p in sweep.points()]
    st = study_of("e2e", tmp_path)
    done = assert_each_point_once(st, keys)
    assert len(st.get_trials()) == len(keys)  # nothing extra (no un-gridded trial, no duplicate)
    assert {t.user_attrs["worker_index"] for t in done.values()} <= {0, 1}
    res = tmp_path / "e2e"
    for f in ("summary.csv", "summary.md", "attention.csv", "attention.md", "accuracy_bars.png",
              "accuracy_vs_params.png", "accuracy_vs_macs.png"):
        assert (res / f).stat().st_size > 0, f
    recs = [read_record(p) for p in (res / "trials").glob("*.json")]
    assert sorted(r.grid_key for r in recs) == sorted(keys)
    for rec in recs:
        assert rec.status == "complete" and rec.synthetic is True
        assert rec.value == rec.test_top1 and 0 <= rec.value <= 1 and rec.metric == "test/acc_top1"
        assert rec.final_val_top1 is not None and rec.best_val_top1 is not None and rec.best_val_top5 is not None
        assert rec.params_count > 0 and rec.macs > 0 and rec.train_throughput > 0 and rec.latency_b1_ms > 0
        assert rec.peak_memory_mb > 0 and rec.wall_time_s > 0 and rec.fit_time_s > 0
        assert rec.config["model"]["conv"] == rec.params["model.conv"] and rec.placement == "matched"
        assert rec.config["seed_everything"] == rec.seed
        assert {"torch", "lightning", "optuna", "python", "platform", "cpu"} <= set(rec.versions)
        assert rec.versions["torch_threads"] == str(max(1, (os.cpu_count() or 1) // 2))  # 2 workers share the CPU
        assert rec.host and rec.git_commit is not None
        options = rec.config["model"]["model_options"]
        assert options == (rerun_options if "model.model_options" in rec.params else {"width": 0.125}), options
        assert rec.slurm_job_id is None and rec.slurm_node is None  # not run under SLURM
        attrs = done[rec.grid_key].user_attrs
        assert attrs["record"]["test_top1"] == rec.test_top1 and attrs["status"] == "complete"
    ((rerun, _),) = sweep.rerun_pairs()
    assert keys[-1] == rerun.key  # run after the grid
    assert "## Run-to-run spread" in (res / "summary.md").read_text()
    assert len(pd.read_csv(res / "reruns.csv")) == 1
    md = (res / "summary.md").read_text()
    assert "`odconv4x-kernel`" in md and "Synthetic data" in md and "2/2" in md
    att = (res / "attention.md").read_text()
    assert "static -> odconv1x-channel" in att and "static -> odconv4x-kernel" in att
    # running the same command again repeats nothing
    n_before = len(st.get_trials())
    r2 = run_cmd(sw_yaml, tmp_path, "--workers", "2", timeout=120)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert len(study_of("e2e", tmp_path).get_trials()) == n_before


def held_trial(name: str, root: Path, gate: Path, n: int = 0, storage=None, study=None,
               min_done: int = 0) -> optuna.trial.FrozenTrial:
    """The trial whose fit is held n-th at ``gate`` (tests/fit_gate.py), once the storage shows it
    RUNNING in that process and ``min_done`` trials complete. Until the test deletes the gate
    (or signals it) the trial stays RUNNING and its fit stays where it is."""
    def check():
        pid = held_pids(gate).get(n)
        if pid is None:
            return None
        try:
            trials = study_of(name, root, storage, study).get_trials()
        except KeyError:
            return None
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) < min_done:
            return None
        return next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                     and t.user_attrs.get("trial_pid") == pid), None)
    return wait_for(check, 300, f"a trial held at {gate.name} (arrival {n})")


def _two_drivers(tmp_path, name, storage_args: list[str], storage=None, study=None):
    """Two drivers ("machines") with one worker each share one study. The first driver's first
    trial is held (the one fit held at the gate) while the second driver starts and runs the
    other points, so both win a trial."""
    gate = tmp_path / f"{name}.gate"
    gate.touch()
    sw_yaml = write_sweep(tmp_path, name, {"conv": ["static", "odconv1x"], "seed": [0, 1]},
                          overrides={"trainer.callbacks": [hold_at_epoch(gate, epoch=0, only=0)]})
    keys = [p.key for p in load_sweep(sw_yaml).points()]
    with background(sw_yaml, tmp_path, "--workers", "1", *storage_args) as a:
        try:
            first = held_trial(name, tmp_path, gate, storage=storage, study=study)
            with background(sw_yaml, tmp_path, "--workers", "1", *storage_args) as b:  # its fits pass the gate
                def others_done():
                    done = [t for t in study_of(name, tmp_path, storage, study).get_trials()
                            if t.state == optuna.trial.TrialState.COMPLETE]
                    return len(done) == len(keys) - 1
                wait_for(others_done, 600, "the second driver to run the other points")
                gate.unlink()
                out_b, _ = b.communicate(timeout=600)
        finally:
            gate.unlink(missing_ok=True)
        out_a, _ = a.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    st = study_of(name, tmp_path, storage, study)
    done = assert_each_point_once(st, keys)
    assert len(st.get_trials()) == len(keys)
    assert done[first.user_attrs["grid_key"]].user_attrs["worker_pid"] == first.user_attrs["worker_pid"]
    return done


@pytest.mark.slow  # the integration tier shares a journal between processes in the SLURM test (2 jobs, one journal)
def test_two_workers_one_journal(tmp_path):
    done = _two_drivers(tmp_path, "twoj", [])
    assert len({t.user_attrs["worker_pid"] for t in done.values()}) == 2  # both drivers' workers ran trials
    assert (tmp_path / "twoj" / "optuna.journal").exists()


def _pg_available() -> str | None:
    try:
        import sqlalchemy
        eng = sqlalchemy.create_engine(rdb_url(PG_URL), connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL at {PG_URL} unreachable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def test_two_workers_postgres(tmp_path):
    why = _pg_available()
    if why:
        pytest.skip(why)
    study = f"test_sweeps_{uuid.uuid4().hex[:10]}"
    try:
        done = _two_drivers(tmp_path, "twopg", ["--storage", PG_URL, "--study", study], storage=PG_URL, study=study)
        assert len({t.user_attrs["worker_pid"] for t in done.values()}) == 2
        assert not (tmp_path / "twopg" / "optuna.journal").exists()
    finally:
        try:
            optuna.delete_study(study_name=study, storage=rdb_url(PG_URL))
        except KeyError:
            pass


def test_sigkill_worker_mid_trial_then_resume(tmp_path, gate):
    # the second trial is held at the start of epoch 1, after its first checkpoint
    sw_yaml = write_sweep(tmp_path, "kill", {"conv": ["static"], "seed": [0, 1, 2]},
                          overrides={"trainer.max_epochs": 8, "trainer.callbacks": [hold_at_epoch(gate, only=1)]})
    sweep = load_sweep(sw_yaml)
    keys = [p.key for p in sweep.points()]
    with background(sw_yaml, tmp_path, "--workers", "1") as drv:
        try:
            victim = held_trial("kill", tmp_path, gate, n=1, min_done=1)
            assert (Path(victim.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").exists()
            st = study_of("kill", tmp_path)
            finished_before = {t.user_attrs["grid_key"]: t for t in st.get_trials()
                               if t.state == optuna.trial.TrialState.COMPLETE}
            mtimes = {k: (tmp_path / "kill" / "trials" / f"{Q.trial_point(t).slug}.json").stat().st_mtime
                      for k, t in finished_before.items()}
            # kill -9 the worker (its fit dies with it), then the whole sweep, as a crash would
            os.kill(int(victim.user_attrs["worker_pid"]), signal.SIGKILL)
            os.killpg(drv.pid, signal.SIGKILL)
            drv.wait()
        finally:
            gate.unlink()
    assert study_of("kill", tmp_path).trials[victim.number].state == optuna.trial.TrialState.RUNNING
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    st = study_of("kill", tmp_path)
    done = assert_each_point_once(st, keys)
    # nothing finished was lost or repeated
    for k, t in finished_before.items():
        assert done[k].number == t.number
        assert (tmp_path / "kill" / "trials" / f"{Q.trial_point(t).slug}.json").stat().st_mtime == mtimes[k]
    # the killed point was reaped, retried once, and resumed from its checkpoint
    assert st.trials[victim.number].state == optuna.trial.TrialState.FAIL
    assert "gone" in st.trials[victim.number].user_attrs["fail_reason"]
    retry = done[victim.user_attrs["grid_key"]]
    assert retry.user_attrs["retry_of"] == victim.number and retry.user_attrs["retries"] == 1
    rec = read_record(tmp_path / "kill" / "trials" / f"{Q.trial_point(retry).slug}.json")
    assert rec.resumed_from and rec.resumed_from.endswith("last.ckpt") and rec.attempt == 1
    assert rec.epochs == 8 and len(rec.val_history) == 8  # history survived the resume
    assert len(st.get_trials()) == len(keys) + 1


def test_nan_trial_recorded_failed_and_sweep_goes_on(tmp_path):
    sw_yaml = write_sweep(tmp_path, "nan", {"conv": ["static"], "lr": [0.05, 1.0e30], "seed": [0]},
                          overrides={"trainer.max_epochs": 2})
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1")
    assert r.returncode == 1, r.stdout + r.stderr  # not every point done
    st = study_of("nan", tmp_path)
    states = {t.user_attrs["grid_key"]: t for t in st.get_trials()}
    assert len(states) == 2 and len(st.get_trials()) == 2  # the diverged trial is not retried
    lr = {t.number: json.loads(t.user_attrs["grid_params"])["model.lr"] for t in st.get_trials()}
    bad = [t for t in st.get_trials() if lr[t.number] == 1.0e30][0]
    good = [t for t in st.get_trials() if lr[t.number] == 0.05][0]
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert bad.state == optuna.trial.TrialState.FAIL and bad.user_attrs["final_failure"] is True
    assert "diverged" in bad.user_attrs["fail_reason"]
    rec = read_record(tmp_path / "nan" / "trials" / f"{Q.trial_point(bad).slug}.json")
    assert rec.status == "failed" and "diverged" in rec.reason
    md = (tmp_path / "nan" / "summary.md").read_text()
    assert "diverged" in md and "failed 0" in md


@pytest.mark.slow
def test_shipped_smoke_sweep(tmp_path):
    """The real sweeps/smoke.yaml (14 trials), as `make ablation SWEEP=smoke WORKERS=2` runs it."""
    r = run_cmd(ROOT / "sweeps" / "smoke.yaml", tmp_path, "--workers", "2", timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    st = study_of("smoke", tmp_path)
    assert_each_point_once(st, [p.key for p in load_sweep(ROOT / "sweeps" / "smoke.yaml").points()])
    assert (tmp_path / "smoke" / "summary.md").exists() and (tmp_path / "smoke" / "accuracy_bars.png").exists()


def test_tuning_stage_then_grid_with_best_values(tmp_path):
    sw_yaml = write_sweep(tmp_path, "tuned", {"conv": ["static"], "seed": [0]},
                          tune={"params": {"model.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}},
                                "n_trials": 2, "overrides": {"trainer.max_epochs": 1}, "pruner": "median"})
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    tuned = json.loads((tmp_path / "tuned" / "tuned.json").read_text())
    assert set(tuned) == {"static"} and 0.01 <= tuned["static"]["model.lr"] <= 0.2
    from sweeps.running.tune import tune_study_name
    tst = study_of("tuned", tmp_path, study=tune_study_name("tuned", "static"))
    assert len([t for t in tst.get_trials() if t.state.is_finished()]) == 2
    st = study_of("tuned", tmp_path)
    (grid_trial,) = st.get_trials()
    assert json.loads(grid_trial.user_attrs["extra_overrides"]) == tuned["static"]
    rec = read_record(next((tmp_path / "tuned" / "trials").glob("*.json")))
    assert rec.config["model"]["lr"] == pytest.approx(tuned["static"]["model.lr"])
    # one record per tuning trial, matching what Optuna was told; the test set is never used to tune
    recs = {r.trial_number: r for r in map(read_record, (tmp_path / "tuned" / "tune" / "trials").glob("*.json"))}
    finished = {t.number: t for t in tst.get_trials() if t.state.is_finished()}
    assert sorted(recs) == sorted(finished)
    for number, r in recs.items():
        assert r.status in ("complete", "pruned") and r.metric == "val/acc_top1" and r.test_top1 is None
        if r.status == "complete":
            assert finished[number].state == optuna.trial.TrialState.COMPLETE and finished[number].value == r.value


def test_ddp_trial_on_cpu_ranks_do_not_rerun_the_driver(tmp_path):
    """DEVICES_PER_TRIAL=2 without GPUs: each trial is a 2-process gloo DDP fit. Lightning
    re-runs sys.argv for rank 1, which is the trial command, not the sweep driver/worker."""
    sw_yaml = write_sweep(tmp_path, "ddp", {"conv": ["static"], "seed": [0]})
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1", "--devices-per-trial", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    st = study_of("ddp", tmp_path)
    assert len(st.get_trials()) == 1 and st.get_trials()[0].state == optuna.trial.TrialState.COMPLETE
    rec = read_record(next((tmp_path / "ddp" / "trials").glob("*.json")))
    assert str(rec.config["trainer"]["devices"]) == "2" and rec.config["trainer"]["strategy"] == "ddp"
    log = next((tmp_path / "ddp" / "runs").glob("*/train.log")).read_text()
    assert "[worker" not in log and "[sweep]" not in log


def test_ctrl_c_then_same_command_resumes_without_using_a_retry(tmp_path, gate):
    # the trial is held at the start of epoch 1 (after its first checkpoint) until Ctrl-C has stopped the sweep
    sw_yaml = write_sweep(tmp_path, "ctrlc", {"conv": ["static"], "seed": [0, 1]},
                          overrides={"trainer.max_epochs": 6, "trainer.callbacks": [hold_at_epoch(gate)]})
    with background(sw_yaml, tmp_path, "--workers", "1") as drv:
        try:
            victim = held_trial("ctrlc", tmp_path, gate)
            os.killpg(drv.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
            out, _ = drv.communicate(timeout=180)
        finally:
            gate.unlink()
    assert drv.returncode == 130, out
    assert "run the same command again to resume" in out
    st = study_of("ctrlc", tmp_path)
    v = st.trials[victim.number]
    assert v.state == optuna.trial.TrialState.FAIL and v.user_attrs["fail_reason"] == "interrupted"
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    st = study_of("ctrlc", tmp_path)
    done = assert_each_point_once(st, [p.key for p in load_sweep(sw_yaml).points()])
    retry = done[victim.user_attrs["grid_key"]]
    assert retry.user_attrs["retry_of"] == victim.number and retry.user_attrs["retries"] == 0
    rec = read_record(tmp_path / "ctrlc" / "trials" / f"{Q.trial_point(retry).slug}.json")
    assert rec.resumed_from and rec.epochs == 6


def test_drain_lets_the_running_trial_finish_and_starts_no_new_one(tmp_path, gate):
    sw_yaml = write_sweep(tmp_path, "drain", {"conv": ["static"], "seed": [0, 1]},
                          overrides={"trainer.callbacks": [hold_at_epoch(gate, epoch=0)]})
    with background(sw_yaml, tmp_path, "--workers", "1") as drv:
        try:
            running = held_trial("drain", tmp_path, gate)
            r = subprocess.run([sys.executable, "-m", "sweeps", "drain", "drain", "--results-root", str(tmp_path)],
                               cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and "1 running trial(s) finish" in r.stdout and "1 waiting" in r.stdout, r
            status = subprocess.run([sys.executable, "-m", "sweeps", "status", "drain", "--results-root",
                                     str(tmp_path)], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
            assert "drain requested" in status.stdout, status
        finally:
            gate.unlink()  # the held trial goes on and finishes
        out, _ = drv.communicate(timeout=180)
    assert drv.returncode == 4, out
    assert "drained" in out and "1/2 points done" in out
    st = study_of("drain", tmp_path)
    states = Counter(t.state for t in st.get_trials())
    # the running trial finished as usual (no interruption), the other point was never claimed
    assert st.trials[running.number].state == optuna.trial.TrialState.COMPLETE
    assert states == {optuna.trial.TrialState.COMPLETE: 1, optuna.trial.TrialState.WAITING: 1}, states
    assert S.drain_requested(st)
    r = run_cmd(sw_yaml, tmp_path, "--workers", "1")  # the same command goes on
    assert r.returncode == 0, r.stdout + r.stderr
    st = study_of("drain", tmp_path)
    assert_each_point_once(st, [p.key for p in load_sweep(sw_yaml).points()])
    assert not S.drain_requested(st) and len(st.get_trials()) == 2


def test_missing_dataset_fails_before_any_trial(tmp_path):
    p = tmp_path / "nodata.yaml"
    p.write_text(yaml.safe_dump({
        "name": "nodata", "base_config": str(ROOT / "experiments" / "cifar10_resnet18.yaml"),
        "overrides": {"data.init_args.data_dir": str(tmp_path / "empty"), "data.init_args.download": False},
        "grid": {"conv": ["static"], "seed": [0]}}))
    r = run_cmd(p, tmp_path, "--workers", "1", timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no trial was started" in r.stderr and "cifar-10" in r.stderr
    assert study_of("nodata", tmp_path).get_trials() == []
