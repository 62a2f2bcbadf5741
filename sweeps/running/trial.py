"""One sweep trial, run in its own process: ``python -m sweeps _trial <run_dir>/trial_spec.json``.

A real Lightning fit of the base config with the trial's overrides (through
``lightning_modules.cli.main(args, run=False)``), resumed from ``<run_dir>/checkpoints/last.ckpt``
when a previous attempt left one, then test (if the datamodule has a test set), cost
measurements and the trial record. Its own process because: the worker pins GPUs with
``CUDA_VISIBLE_DEVICES`` (and the thread counts with ``OMP_NUM_THREADS``) before torch starts,
a crash or OOM cannot take the worker down, and a DDP trial's extra ranks (Lightning re-runs
``sys.argv`` for them) re-run this trial, not the sweep driver or the worker loop. Only global
rank 0 writes the record. The spec's fields: :mod:`sweeps.running.trial_spec`.

Under a SLURM worker job (:mod:`sweeps.running.slurm`) the job's warning signal (``--signal``, also
``scancel --signal=USR1``) reaches this process directly: the fit stops after the running
training step, saves ``<run_dir>/checkpoints/last.ckpt`` at that step and exits with
:data:`~lightning_modules.contract.EXIT_STOPPED` (no record); the next attempt resumes from it.
The trial's own handler also keeps Lightning's SLURM handler (which would requeue the job
itself) from being installed.

Exit codes: 0 when a record was written (complete, pruned or diverged), 130 when stopped by a
signal, 1 on any other error.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_modules import DatasetError
from lightning_modules.contract import (
    BEST_VAL_TOP1,
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    TEST_TOP1,
    VAL_LOSS,
    VAL_TOP1,
    VAL_TOP5,
)

from ..record import TrialRecord, write_record
from .point import build_cli, resolved_config
from .slurm import current_job, stop_signal
from .storage import DEFAULT_OUTAGE_LIMIT_S, OutageGuard, make_storage, storage_label
from .study import load_study, make_pruner
from .trial_callbacks import StopFlag, StopOnSignal, TrialStopped, ValHistory
from .trial_measure import library_versions, measure_costs
from .trial_spec import build_cli_args

DIVERGED = "diverged"  # the reason of a diverged trial starts with this (not retried, see grid_queue.report_record)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _has(obj, method: str) -> bool:
    """Whether ``obj`` (a LightningModule or DataModule) overrides Lightning's ``method``."""
    try:
        return is_overridden(method, obj)
    except ValueError:  # not a Lightning class: is_overridden has no parent to compare with
        return hasattr(obj, method)


@dataclass
class TrialRun:
    """The record of the running trial, and how it is finished (written by global rank 0)."""

    rec: TrialRecord
    record_path: Path
    rank0: bool
    t0: float

    @classmethod
    def start(cls, spec: dict[str, Any]) -> TrialRun:
        job = current_job()
        rec = TrialRecord(sweep=spec["sweep"], grid_key=spec["grid_key"], variant=spec["variant"],
                          params=spec["params"], seed=spec.get("seed"), status="failed",
                          attempt=int(spec.get("attempt", 0)), trial_number=spec.get("trial_number"),
                          cli_args=list(spec["cli_args"]), git_commit=spec.get("git_commit"), host=platform.node(),
                          analysis_plan=spec.get("analysis_plan"),
                          devices=os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu",
                          started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          slurm_job_id=job.job_id if job else None, slurm_node=job.node if job else None)
        rank0 = (int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
                 and os.environ.get("NODE_RANK", "0") == "0")
        return cls(rec, Path(spec["record_path"]), rank0, time.time())

    def finish(self, status: str, reason: str | None = None) -> int:
        self.rec.status, self.rec.reason = status, reason
        self.rec.wall_time_s = time.time() - self.t0
        self.rec.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.rank0:
            write_record(self.record_path, self.rec)
        return EXIT_OK


def pruning_trial(spec: dict[str, Any]) -> optuna.trial.Trial | None:
    """The Optuna trial a tuning trial reports its val accuracy to every epoch (for its
    pruner); None for a grid trial."""
    if not spec.get("prune_study"):
        return None
    url, root = spec.get("prune_storage"), spec.get("results_root", "results")
    guard = OutageGuard(storage_label(url, spec["sweep"], root),
                        limit_s=spec.get("outage_limit_s") or DEFAULT_OUTAGE_LIMIT_S)
    study = load_study(make_storage(url, spec["sweep"], root, guard), spec["prune_study"],
                       pruner=make_pruner(spec.get("pruner", "median")))
    return study.trial_handle(int(spec["prune_trial_number"]))


def record_setup(rec: TrialRecord, cli) -> None:
    """The record's fields known before the fit: versions, config, data (the data is set up
    here: data that cannot be set up fails as it would in the fit, exit 1)."""
    rec.versions = library_versions()
    rec.config = resolved_config(cli)
    rec.placement = (rec.config.get("model") or {}).get("placement")
    dm = cli.datamodule
    rec.synthetic = bool(getattr(dm, "synthetic", False) or "synthetic" in type(dm).__name__.lower())
    dm.setup("fit")
    rec.data = json.loads(json.dumps(dm.describe(), default=str))


def record_fit(rec: TrialRecord, trainer, dm, history: list[dict[str, float]], start_epoch: int) -> None:
    """The record's fields of a finished fit: epochs, final and best val metrics, throughput."""
    m = trainer.callback_metrics
    rec.val_history = history
    rec.epochs = int(trainer.current_epoch)
    last_row = history[-1] if history else {}
    rec.final_val_top1 = _finite(m.get(VAL_TOP1, last_row.get(VAL_TOP1)))
    rec.final_val_top5 = _finite(m.get(VAL_TOP5, last_row.get(VAL_TOP5)))
    rec.final_val_loss = _finite(m.get(VAL_LOSS, last_row.get(VAL_LOSS)))
    if history:
        best = max(history, key=lambda h: h.get(VAL_TOP1, -1.0))
        rec.best_val_top1 = best.get(VAL_TOP1)
        rec.best_epoch = best["epoch"]
        rec.best_val_top5 = max(h.get(VAL_TOP5, -1.0) for h in history)
    samples = len(dm.train_set)
    if isinstance(trainer.limit_train_batches, int):
        samples = min(samples, trainer.limit_train_batches * dm.batch_size)
    epochs_run = rec.epochs - start_epoch
    if rec.fit_time_s and epochs_run > 0:
        rec.fit_throughput = samples * epochs_run / rec.fit_time_s


def record_test(rec: TrialRecord, trainer, model, dm, wanted: bool) -> None:
    """Test (when ``wanted`` and the data has a test set) into the record."""
    has_test = getattr(dm, "has_test_set", None)
    if has_test is None:
        has_test = _has(dm, "test_dataloader")
    if not (wanted and has_test):
        return
    res = trainer.test(model, datamodule=dm, verbose=False)
    if res:
        r = res[0]
        rec.test_top1, rec.test_top5, rec.test_loss = (_finite(r.get(TEST_TOP1)), _finite(r.get("test/acc_top5")),
                                                       _finite(r.get("test/loss")))


def record_costs(rec: TrialRecord, trainer, model, dm, opts: dict[str, Any]) -> None:
    try:
        for k, v in measure_costs(model, dm, trainer.strategy.root_device, opts).items():
            setattr(rec, k, v)
    # Any failure, whatever its type: a cost measurement must not lose a finished fit's record.
    except Exception as e:  # noqa: BLE001
        rec.reason = f"cost measurement failed: {e!r}"


def resume_point(run_dir: Path, trainer, stop: StopFlag | None) -> tuple[str | None, int]:
    """The checkpoint to resume from (None: start afresh) and its next epoch; with ``stop``,
    the callback that saves the checkpoint on SLURM's warning signal is added to ``trainer``."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if stop is not None:
        last.parent.mkdir(parents=True, exist_ok=True)
        trainer.callbacks.append(StopOnSignal(stop, last))
    ckpt = str(last) if last.exists() else None
    # read before the fit: the fit's checkpoint callback may overwrite last.ckpt
    start_epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1 if ckpt else 0
    return ckpt, start_epoch


def run_trial(spec: dict[str, Any], stop: StopFlag | None = None) -> int:
    """Run the trial described by ``spec`` (written by the worker); returns the exit code."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    run = TrialRun.start(spec)
    rec, run_dir = run.rec, Path(spec["run_dir"])
    optuna_trial = pruning_trial(spec)
    try:
        cli = build_cli(list(spec["cli_args"]))
    except SystemExit as e:  # jsonargparse reports config errors by exiting
        run.finish("failed", f"bad config (LightningCLI exited with {e.code}); see {run_dir / 'train.log'}")
        return EXIT_ERROR
    record_setup(rec, cli)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    hist = ValHistory(optuna_trial)
    trainer.callbacks.append(hist)
    ckpt, start_epoch = resume_point(run_dir, trainer, stop)
    rec.resumed_from = ckpt
    fit_start = time.time()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    except FloatingPointError as e:
        # the training module's report of a non-finite loss (ImageClassifier(stop_on_nonfinite=True))
        rec.val_history = hist.history
        return run.finish("failed", f"{DIVERGED}: {e}")
    except optuna.TrialPruned as e:
        rec.val_history, rec.epochs = hist.history, len(hist.history)
        rec.final_val_top1 = (hist.history[-1] if hist.history else {}).get(VAL_TOP1)
        return run.finish("pruned", str(e))
    rec.fit_time_s = time.time() - fit_start
    if getattr(trainer, "interrupted", False):
        raise KeyboardInterrupt("fit interrupted")
    record_fit(rec, trainer, dm, hist.history, start_epoch)
    record_test(rec, trainer, model, dm, spec.get("test", True))
    if not trainer.is_global_zero:
        return EXIT_OK
    record_costs(rec, trainer, model, dm, spec.get("measure", {}))
    metric = spec.get("metric") or (TEST_TOP1 if rec.test_top1 is not None else VAL_TOP1)
    rec.metric = metric
    rec.value = {TEST_TOP1: rec.test_top1, VAL_TOP1: rec.final_val_top1, BEST_VAL_TOP1: rec.best_val_top1}[metric]
    if rec.value is None:
        return run.finish("failed", f"metric {metric} was not produced (does the config have that split?)")
    return run.finish("complete", rec.reason)


def prepare(base_config: str, overrides: dict[str, Any]) -> int:
    """Download / cache the dataset once before workers start (``python -m sweeps _prepare``),
    so that parallel workers do not race on it. Exit code 0 when the data is ready, 2 when
    the config is bad or the data is not available."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cli = build_cli(build_cli_args(base_config, {**overrides, "trainer.logger": False}, tmp))
            cli.datamodule.prepare_data()
        except SystemExit as e:
            return int(e.code or EXIT_BAD_INPUT)
        except (DatasetError, OSError) as e:  # missing, corrupt or undownloadable data
            print(f"the sweep's data is not available: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return EXIT_OK


def main(spec_path: str) -> int:
    stop = None
    sig = stop_signal()
    if sig is not None:  # first: the worker started this process with the signal ignored
        stop = StopFlag()
        stop.install(sig)
    spec = json.loads(Path(spec_path).read_text())
    try:
        return run_trial(spec, stop)
    except TrialStopped as e:
        print(f"trial stopped: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("trial interrupted", file=sys.stderr)
        return EXIT_STOPPED
    # Any other failure, whatever its type: the trial process reports it as exit code 1 with its
    # traceback (in train.log), which the worker records as a failed attempt.
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return EXIT_ERROR
