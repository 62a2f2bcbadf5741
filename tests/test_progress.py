"""Progress of long work: a running trial's epoch (``k/N``, from the fit's ``progress.json``
through its worker's heartbeat into the ``progress`` user attribute), the sweep's expected
time left from the per-variant pace of finished (else running) trials (``sweeps.running.study.time_left``), and the
warning before a GPU-sized sweep starts on a machine without a GPU. No training, no timing:
finished trials get their start and end times explicitly."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps.cli import main as sweep_main
from sweeps.definition import parse_sweep
from sweeps.grid import GridPoint, grid_key
from sweeps.running import grid_queue as Q
from sweeps.running import study as S
from sweeps.running.process import Slot
from sweeps.running.runner import cpu_scale_warning, run_sweep
from sweeps.running.storage import make_storage
from sweeps.running.worker import beat_progress

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")
GPU_BASE = str(ROOT / "experiments" / "cifar100_resnet18.yaml")  # accelerator auto, 200 epochs
T0 = datetime(2026, 1, 1, 12, 0, 0)


def make_sweep(tmp_path: Path, base: str = SMOKE, **extra) -> tuple[Path, object]:
    raw = {"name": "prog", "base_config": base, "grid": {"conv": ["static", "odconv1x"], "seed": [0, 1, 2]}, **extra}
    path = tmp_path / "prog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, parse_sweep(raw)


def point(conv: str, seed: int) -> GridPoint:
    return GridPoint({"model.conv": conv, "seed_everything": seed})


def add_finished(st: S.SweepStudy, p: GridPoint, seconds: float, resumed: bool = False) -> None:
    """A COMPLETE grid trial that ran ``seconds`` (Optuna's start and end times set explicitly)."""
    attrs = {**Q.grid_attrs(p), "record": {"resumed_from": "last.ckpt" if resumed else None}}
    st.add_trial(optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.COMPLETE, value=0.5, datetime_start=T0,
        datetime_complete=T0 + timedelta(seconds=seconds), params={}, distributions={}, user_attrs=attrs,
        system_attrs={}, intermediate_values={}, trial_id=0))


def start_running(st: S.SweepStudy, key: str, epoch: int | None, max_epochs: int = 15) -> optuna.trial.Trial:
    """Claim the queued trial of ``key`` (WAITING -> RUNNING) with a live worker (this process)
    and, unless ``epoch`` is None, the progress its heartbeat would have copied."""
    while (t := Q.pop_waiting(st)) is not None:
        if st.trials[t.number].user_attrs["grid_key"] == key:
            break
        st.storage.set_trial_state_values(st.trial_id(t.number), state=optuna.trial.TrialState.WAITING)
    assert t is not None
    for k, v in {"worker_host": S.HOST, "worker_pid": os.getpid(), "claimed_at": time.time()}.items():
        t.set_user_attr(k, v)
    if epoch is not None:
        t.set_user_attr(S.PROGRESS_ATTR, {"epoch": epoch, "max_epochs": max_epochs, "start_epoch": 0})
    return t


@pytest.fixture
def sweep_study(tmp_path):
    """static s0 (100 s) and s1 (140 s) finished, static s2 running at epoch 3/15, the three
    odconv1x points waiting."""
    path, sw = make_sweep(tmp_path)
    st = S.create_study(make_storage(None, sw.name, tmp_path), sw.name)
    add_finished(st, point("static", 0), 100)
    add_finished(st, point("static", 1), 140)
    Q.enqueue_grid(st, sw)
    start_running(st, grid_key(point("static", 2).params), epoch=3)
    return path, sw, st


def test_time_left_by_hand(sweep_study):
    _, sw, st = sweep_study
    p = S.progress(st, [pt.key for pt in sw.points()], {pt.key: pt.variant for pt in sw.points()})
    left = S.time_left(p, workers=1)
    # static: D = (100 + 140) / 2 = 120 s; the running static trial needs 120 x (15 - 3) / 15 = 96 s.
    # odconv1x has no finished trial: the mean D of the measured variants, 120 s, for each of 3.
    assert left.seconds == pytest.approx(96 + 3 * 120)
    assert left.workers == 1 and left.assumed == ["odconv1x"]
    assert S.time_left(p, workers=2).seconds == pytest.approx((96 + 3 * 120) / 2)
    line = S.format_progress(p, 1, now=time.time())
    assert "2/6 done, 1 running, 3 waiting, 0 failed" in line
    assert "| epochs 3/15 |" in line and "time left ~7m36s" in line and "at 1 worker(s)" in line


def test_a_variant_without_a_finished_trial_takes_its_running_trials_pace(sweep_study):
    _, sw, st = sweep_study
    t = start_running(st, grid_key(point("odconv1x", 0).params), epoch=5)
    start = st.trials[t.number].datetime_start.timestamp()
    p = S.progress(st, [pt.key for pt in sw.points()], {pt.key: pt.variant for pt in sw.points()})
    left = S.time_left(p, workers=1, now=start + 300)
    # odconv1x: 5 of 15 epochs in 300 s, D = 300 x 15 / 5 = 900 s; the running one needs
    # 900 x 10 / 15 = 600 s, each of the 2 waiting ones 900 s; static's running trial 96 s as before.
    assert left.paced == ["odconv1x"] and left.assumed == []
    assert left.seconds == pytest.approx((96 + 600 + 2 * 900) / 2)  # 2 trials run at a time
    # A trial that resumed at epoch 2 has trained 3 epochs in its 300 s: D = 300 x 15 / 3.
    t.set_user_attr(S.PROGRESS_ATTR, {"epoch": 5, "max_epochs": 15, "start_epoch": 2})
    p = S.progress(st, [pt.key for pt in sw.points()], {pt.key: pt.variant for pt in sw.points()})
    assert S.running_pace_seconds(p, now=start + 300)["odconv1x"] == pytest.approx(1500.0)
    assert S.time_left(p, workers=2, now=start + 300).seconds == pytest.approx((96 + 1000 + 2 * 1500) / 2)


def test_status_names_the_running_trials_epoch_and_the_time_left(sweep_study, tmp_path, capsys):
    path, _, _ = sweep_study
    assert sweep_main(["status", str(path), "--results-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "time left ~7m36s" in out and "at 1 worker(s)" in out
    assert "assumes the mean of the measured variants for: odconv1x" in out
    running = [line for line in out.splitlines() if line.strip().startswith("running ")]
    assert len(running) == 1
    assert grid_key(point("static", 2).params) in running[0] and "epoch 3/15" in running[0]


def test_time_left_is_unknown_before_any_trial_finished_and_skips_resumed_trials(tmp_path):
    _, sw = make_sweep(tmp_path)
    st = S.create_study(make_storage(None, sw.name, tmp_path), sw.name)
    add_finished(st, point("static", 0), 500, resumed=True)   # covers part of its fit: no pace
    Q.enqueue_grid(st, sw)
    start_running(st, grid_key(point("static", 1).params), epoch=None)
    p = S.progress(st, [pt.key for pt in sw.points()])
    assert S.time_left(p).seconds is None
    line = S.format_progress(p, 1)
    assert "time left unknown" in line and "| epochs ? |" in line


def test_heartbeat_copies_the_fits_epoch_into_the_trial(tmp_path):
    from lightning_modules.contract import Progress, write_progress
    _, sw = make_sweep(tmp_path)
    st = S.create_study(make_storage(None, sw.name, tmp_path), sw.name)
    Q.enqueue_grid(st, sw)
    t = Q.pop_waiting(st)
    tid = st.trial_id(t.number)
    run_dir = tmp_path / "run"
    assert beat_progress(st, tid, run_dir, None) is None  # no file yet: nothing written
    write_progress(run_dir, Progress(epoch=3, max_epochs=15, start_epoch=0, time=1.0))
    reported = beat_progress(st, tid, run_dir, None)
    assert reported == {"epoch": 3, "max_epochs": 15, "start_epoch": 0}
    assert st.trials[t.number].user_attrs[S.PROGRESS_ATTR] == reported
    assert S.format_epoch(st.trials[t.number]) == "3/15"


def test_gpu_sweep_on_a_machine_without_gpu_says_its_scale_first(tmp_path, capsys, monkeypatch):
    _, sw = make_sweep(tmp_path, base=GPU_BASE)
    cpu = [Slot(0, "", 2), Slot(1, "", 2)]
    line = cpu_scale_warning(sw, cpu)
    assert line is not None and "\n" not in line
    for words in ("no CUDA device", "6 grid points x 200 epochs = 1200 epochs", "accelerator auto",
                  "the CPU (2 worker(s)", "make estimate SWEEP=", "sweeps/cifar10_factorial.yaml"):
        assert words in line, line
    assert cpu_scale_warning(sw, [Slot(0, "0", None)]) is None            # a GPU is visible
    _, cpu_sweep = make_sweep(tmp_path, base=GPU_BASE, overrides={"trainer.accelerator": "cpu"})
    assert cpu_scale_warning(cpu_sweep, cpu) is None                     # meant for the CPU
    _, gpu_only = make_sweep(tmp_path, base=GPU_BASE, overrides={"trainer.accelerator": "gpu"})
    assert "its trials will fail" in cpu_scale_warning(gpu_only, cpu)
    # run prints it before anything else (here the data preparation, stubbed to fail, stops it)
    import sweeps.running.runner as runner
    monkeypatch.setattr(runner, "_prepare_data", lambda sweep, res: False)
    assert run_sweep(sw, None, workers=1, gpus="cpu", results_root=str(tmp_path), aggregate_at_end=False) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("[sweep] no CUDA device visible: sweep 'prog' is 6 grid points"), err
    assert json.loads((tmp_path / "prog" / "sweep.json").read_text())["name"] == "prog"
