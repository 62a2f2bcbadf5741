"""Fast tests of the sweep machinery that run no training: queue, reaping, statistics,
aggregation. Sweep files are tested in test_definition.py, the end-to-end runs in test_sweeps_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from sweeps.cli import main as cli_main
from sweeps.definition import parse_sweep
from sweeps.grid import grid_key
from sweeps.record import RECORD_VERSION, TrialRecord, read_record, write_record
from sweeps.reporting.aggregate import aggregate
from sweeps.running import grid_queue as Q
from sweeps.running import liveness
from sweeps.running import study as S
from sweeps.running.process import plan_slots
from sweeps.running.storage import make_storage, storage_label

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")


def _raw(**kw):
    d = {"name": "t", "base_config": BASE, "grid": {"conv": ["static", "odconv1x"], "seed": [0, 1]}}
    d.update(kw)
    return d


# --- queue, reaping ------------------------------------------------------------------------

def _study(tmp_path, raw=None):
    sw = parse_sweep(raw or _raw())
    storage = make_storage(None, sw.name, tmp_path)
    return sw, S.create_study(storage, sw.name)


def test_postgres_storage_without_a_driver_names_the_extra_to_install(tmp_path, monkeypatch):
    """psycopg2 is the optional `postgres` extra: without a PostgreSQL driver, opening a
    postgresql:// storage says what to install (and not the URL's password)."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "psycopg2") else find_spec(name, *a))
    url = "postgresql://sweeper:secret@127.0.0.1:5432/sweeps"
    with pytest.raises(ImportError) as e:
        make_storage(url, "t", tmp_path)
    assert "pip install -e '.[postgres]'" in str(e.value) and "secret" not in str(e.value)
    assert storage_label(url, "t", tmp_path) == url  # the label (for optuna-dashboard) needs no driver
    make_storage(None, "t", tmp_path)  # the journal file needs none either


def test_the_cli_says_a_missing_driver_in_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "psycopg2") else find_spec(name, *a))
    rc = cli_main(["status", "smoke", "--storage", "postgresql://sweeper:secret@127.0.0.1:5432/sweeps",
                   "--results-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("odconv-sweep: error: PostgreSQL storage")
    assert "postgres" in err[0] and "secret" not in err[0]


def test_enqueue_once_and_pop_runs_nothing_when_empty(tmp_path):
    sw, st = _study(tmp_path)
    assert Q.enqueue_grid(st, sw) == 4
    assert Q.enqueue_grid(st, sw) == 0  # a re-run enqueues nothing
    popped = []
    while (t := Q.pop_waiting(st)) is not None:
        popped.append(t.number)
    assert sorted(popped) == [0, 1, 2, 3]
    assert Q.pop_waiting(st) is None
    assert len(st.get_trials()) == 4  # a late pop created no trial


def test_a_drained_study_gives_workers_no_trial_until_run_again(tmp_path):
    from types import SimpleNamespace

    from sweeps.running.tune import TuneSource, open_tune_studies
    from sweeps.running.worker import GridSource
    raw = _raw(tune={"params": {"model.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}},
                     "n_trials": 2})
    sw, st = _study(tmp_path, raw)
    Q.enqueue_grid(st, sw)
    tune_studies = open_tune_studies(sw, st.storage, sw.name, create=True)
    worker = SimpleNamespace(study=st, sweep=sw, stop=False, storage=st.storage)
    S.request_drain(st)
    assert S.drain_requested(S.load_study(make_storage(None, sw.name, tmp_path), sw.name))  # seen by others
    assert GridSource().claim(worker) is None
    assert TuneSource(sw, st.storage, sw.name).claim(worker) is None
    assert [t.state for t in st.get_trials()] == [optuna.trial.TrialState.WAITING] * 4  # nothing claimed
    assert all(not s.get_trials() for s in tune_studies.values())  # no tuning trial asked
    S.clear_drain(st)  # what the next `run` does
    assert not S.drain_requested(st) and Q.pop_waiting(st) is not None


def test_git_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    from sweeps.running.trial_spec import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "results" / "s").mkdir(parents=True)
    (tmp_path / "results" / "s" / "optuna.journal").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "c")
    sha = git_commit(tmp_path)
    assert sha and len(sha) == 40
    (tmp_path / "results" / "s" / "optuna.journal").write_text("{}\n{}\n")  # a running study writes here
    (tmp_path / "new.py").write_text("")  # untracked: not part of the commit either way
    assert git_commit(tmp_path) == sha
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == sha + "-dirty"
    assert git_commit(tmp_path / "results") == sha + "-dirty"  # from a subfolder: the whole tree


def test_a_grown_grid_enqueues_only_its_new_points_after_the_queue(tmp_path):
    """Adding seeds to a study part-way (a new grid block in the sweep file): the same command
    enqueues only the new points, behind the ones already queued; finished trials stay."""
    sw, st = _study(tmp_path)
    Q.enqueue_grid(st, sw)
    first = Q.pop_waiting(st)
    st.tell(first.number, 0.5)
    grown = parse_sweep(_raw(grid=[{"conv": ["static", "odconv1x"], "seed": [0, 1]},
                                   {"conv": ["odconv1x"], "seed": [2, 3]}]))
    assert [p.key for p in grown.points()][:4] == [p.key for p in sw.points()]  # old keys unchanged
    assert Q.enqueue_grid(st, grown) == 2
    assert st.trials[first.number].state == optuna.trial.TrialState.COMPLETE
    order = []
    while (t := Q.pop_waiting(st)) is not None:
        order.append(st.trials[t.number].user_attrs["grid_key"])
    new = [grid_key({"model.conv": "odconv1x", "seed_everything": s}) for s in (2, 3)]
    assert order[-2:] == new and not set(new) & set(order[:-2]) and len(order) == 5


def test_reap_dead_worker_requeues_with_retry_limit(tmp_path):
    sw, st = _study(tmp_path, _raw(max_retries=1))
    Q.enqueue_grid(st, sw)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = Q.pop_waiting(st)
    for k, v in {"claimed_at": time.time(), "worker_host": S.HOST, "worker_pid": dead.pid, "worker_start": "1"}.items():
        t.set_user_attr(k, v)
    assert liveness.reap(st, sw) == [t.number]
    assert st.trials[t.number].state == optuna.trial.TrialState.FAIL
    retry = [x for x in st.get_trials() if x.user_attrs.get("retry_of") == t.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    assert retry[0].user_attrs["grid_key"] == st.trials[t.number].user_attrs["grid_key"]
    assert retry[0].user_attrs["retries"] == 1
    # the retry is claimed before the points enqueued ahead of it; it dies too: its budget (1)
    # is spent, so it stays failed
    t2 = Q.pop_waiting(st)
    assert t2.number == retry[0].number
    others = [Q.pop_waiting(st)]
    for k, v in {"claimed_at": time.time(), "worker_host": S.HOST, "worker_pid": dead.pid}.items():
        t2.set_user_attr(k, v)
    assert liveness.reap(st, sw) == [t2.number]
    assert st.trials[t2.number].user_attrs["final_failure"] is True
    assert not [x for x in st.get_trials() if x.user_attrs.get("retry_of") == t2.number]
    # a live worker (this process) is not reaped, nor a fresh trial without worker attrs
    t3 = others[0]
    for k, v in {"claimed_at": time.time(), "worker_host": S.HOST, "worker_pid": os.getpid(),
                 "worker_start": liveness.process_start_time(os.getpid())}.items():
        t3.set_user_attr(k, v)
    assert liveness.reap(st, sw) == []


def test_plan_slots():
    assert [s.devices for s in plan_slots("0,1,2,3")] == ["0", "1", "2", "3"]
    assert [s.devices for s in plan_slots("0,1,2,3", devices_per_trial=2)] == ["0,1", "2,3"]
    cpu = plan_slots("cpu", workers=2, cpus=4)
    assert [s.devices for s in cpu] == ["", ""] and [s.threads for s in cpu] == [2, 2]
    with pytest.raises(ValueError, match="DEVICES_PER_TRIAL"):
        plan_slots("0", devices_per_trial=2)


# --- statistics and aggregation -----------------------------------------------------------

def _rec(sweep, conv, seed, value, params=1000, macs=10_000, tput=100.0, status="complete"):
    p = {"model.conv": conv, "seed_everything": seed}
    return TrialRecord(sweep=sweep, grid_key=grid_key(p), variant=conv, params=p, seed=seed, status=status,
                       metric="test/acc_top1", value=value, test_top1=value, params_count=params, macs=macs,
                       train_throughput=tput, latency_b1_ms=1.0, latency_b64_ms=10.0, peak_memory_mb=5.0,
                       reason=None if status == "complete" else "diverged: nan")


def test_aggregate_partial_sweep(tmp_path):
    convs = ["static", "odconv1x-channel", "odconv1x", "odconv1x-filter+spatial", "odconv4x-kernel", "odconv4x"]
    raw = _raw(name="agg", grid={"conv": convs, "seed": [0, 1, 2]})
    sw = parse_sweep(raw)
    (tmp_path / "agg").mkdir()
    (tmp_path / "agg" / "sweep.json").write_text(json.dumps(sw.to_dict()))
    acc = {"static": 0.70, "odconv1x-channel": 0.72, "odconv1x": 0.73, "odconv1x-filter+spatial": 0.71,
           "odconv4x-kernel": 0.715, "odconv4x": 0.75}
    for conv in convs:
        for seed in (0, 1, 2):
            if conv == "odconv4x" and seed == 2:
                continue  # missing
            status = "failed" if (conv == "odconv1x" and seed == 1) else "complete"
            r = _rec("agg", conv, seed, acc[conv] + 0.01 * seed, params=1000 + 100 * len(conv), tput=100 - len(conv),
                     status=status)
            write_record(tmp_path / "agg" / "trials" / f"{r.grid_key.replace('=', '_')}.json", r)
    out = aggregate("agg", tmp_path)
    s = out["summary"].set_index("variant")
    assert s.loc["static", "top1_mean"] == pytest.approx(71.0)
    assert s.loc["static", "n_seeds"] == 3
    assert s.loc["odconv4x", "n_seeds"] == 2 and s.loc["odconv4x", "missing_seeds"] == "2"
    assert s.loc["odconv1x", "failed_seeds"] == "1"
    assert s.loc["odconv4x", "delta_vs_static"] == pytest.approx(4.5)
    assert s.loc["odconv4x", "delta_ci_low"] < 4.5 < s.loc["odconv4x", "delta_ci_high"]
    assert s.loc["static", "throughput_ratio"] == pytest.approx(1.0)
    a = out["attention"].set_index("attention")
    # channel: static -> odconv1x-channel, odconv1x-filter+spatial -> odconv1x
    assert a.loc["channel", "n_pairs"] == 2
    assert a.loc["kernel", "n_pairs"] == 2  # static -> odconv4x-kernel, odconv1x -> odconv4x
    assert a.loc["filter", "n_pairs"] == 0
    md = (tmp_path / "agg" / "summary.md").read_text()
    assert "partial sweep" in md and "missing 2" in md and "failed 1" in md and "diverged" in md
    for f in ("summary.csv", "attention.csv", "attention.md", "accuracy_bars.png", "accuracy_vs_params.png",
              "accuracy_vs_macs.png"):
        assert (tmp_path / "agg" / f).stat().st_size > 0
    # the CLI does the same
    assert cli_main(["results", "agg", "--results-root", str(tmp_path)]) == 0


def test_record_roundtrip_and_version(tmp_path):
    r = _rec("x", "static", 0, 0.5)
    write_record(tmp_path / "r.json", r)
    assert read_record(tmp_path / "r.json") == r
    assert r.version == RECORD_VERSION
    d = r.to_dict()
    d["version"] = RECORD_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        TrialRecord.from_dict(d)
    assert all(k.startswith("r.") for k in r.user_attrs())


def test_aggregate_uses_records_in_the_study(tmp_path):
    """Points run on another machine: their JSON is not here, the study has the record."""
    sw, st = _study(tmp_path, _raw(name="remote"))
    Q.enqueue_grid(st, sw)
    (tmp_path / "remote").mkdir(exist_ok=True)
    (tmp_path / "remote" / "sweep.json").write_text(json.dumps(sw.to_dict()))
    while (t := Q.pop_waiting(st)) is not None:
        p = json.loads(st.trials[t.number].user_attrs["grid_params"])
        rec = _rec("remote", p["model.conv"], p["seed_everything"], 0.5 + 0.1 * p["seed_everything"])
        t.set_user_attr("record", {k[2:]: v for k, v in rec.user_attrs().items()})
        st.tell(t, rec.value)
    s = aggregate("remote", tmp_path, study=st)["summary"].set_index("variant")
    assert s.loc["odconv1x", "n_seeds"] == 2 and s.loc["odconv1x", "top1_mean"] == pytest.approx(55.0)
    assert aggregate("remote", tmp_path)["summary"].set_index("variant").loc["odconv1x", "n_seeds"] == 0


def test_stale_worker_attrs_copied_to_a_retry_are_not_trusted(tmp_path):
    sw, st = _study(tmp_path)
    Q.enqueue_grid(st, sw)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = Q.pop_waiting(st)
    # attrs of an earlier owner (claimed long before this trial started): not this trial's worker
    for k, v in {"claimed_at": time.time() - 3600, "worker_host": S.HOST, "worker_pid": dead.pid}.items():
        t.set_user_attr(k, v)
    assert liveness.reap(st, sw) == []
    assert liveness.reap(st, parse_sweep(_raw(stale_after_s=30))) == []  # started just now


@pytest.mark.parametrize("signal_at_batch, stop_step, stop_log", [(0, 3, "at epoch 1 step 3"),
                                                                  (1, 4, "at epoch 1 step 4")])
def test_stop_on_signal_saves_a_checkpoint_and_the_resumed_fit_validates_every_epoch(
        tmp_path, capsys, signal_at_batch, stop_step, stop_log):
    """The trial's answer to SLURM's warning signal, on a tiny Lightning fit (2 steps an epoch,
    4 epochs). The signal during an epoch's first step: stop after that step (step 3); during
    its last step: stop at the epoch's end, after its validation (step 4). Either way the fit
    resumed from last.ckpt reaches step 8 and validates each epoch exactly once overall."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from sweeps.running.trial_callbacks import StopFlag, StopOnSignal, TrialStopped

    class Tiny(L.LightningModule):
        def __init__(self, validated: list[int]):
            super().__init__()
            self.lin, self.validated = torch.nn.Linear(4, 1), validated

        def training_step(self, batch, batch_idx):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("v", self.lin(batch[0]).mean())

        def on_validation_epoch_end(self):
            self.validated.append(self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    flag = StopFlag()

    class SignalDuringStep(L.Callback):  # stands for the signal handler, at a known step
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if (trainer.current_epoch, batch_idx) == (1, signal_at_batch):
                flag.signum = int(signal.SIGUSR1)

    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()

    def trainer(callbacks):
        return L.Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accelerator="cpu")

    validated: list[int] = []
    with pytest.raises(TrialStopped):
        trainer([SignalDuringStep(), StopOnSignal(flag, last)]).fit(Tiny(validated), data, data)
    assert f"trial stopped by SIGUSR1: saved {last} {stop_log}" in capsys.readouterr().err
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == stop_step
    assert not last.with_name("last.ckpt.tmp").exists()
    resumed = trainer([])
    resumed.fit(Tiny(validated), data, data, ckpt_path=str(last))
    assert resumed.global_step == 8
    assert validated == [0, 1, 2, 3]
