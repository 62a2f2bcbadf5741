"""One sweep trial, run in its own process: ``python -m sweeps _trial <run_dir>/trial_spec.json``.

A real Lightning fit of the base config with the trial's overrides (through
``lightning_modules.cli.main(args, run=False)``), resumed from ``<run_dir>/checkpoints/last.ckpt``
when a previous attempt left one, then test (if the datamodule has a test set), cost
measurements and the trial record. Its own process because: the worker pins GPUs with
``CUDA_VISIBLE_DEVICES`` before torch starts, a crash or OOM cannot take the worker down, and
a DDP trial's extra ranks (Lightning re-runs ``sys.argv`` for them) re-run this trial, not the
sweep driver or the worker loop. Only global rank 0 writes the record.

Under a SLURM worker job (:mod:`sweeps.running.slurm`) the job's warning signal (``--signal``, also
``scancel --signal=USR1``) reaches this process directly: the fit stops after the running
training step, saves ``<run_dir>/checkpoints/last.ckpt`` at that step and exits with
:data:`EXIT_STOPPED` (no record); the next attempt resumes from it. The trial's own handler
also keeps Lightning's SLURM handler (which would requeue the job itself) from being installed.

Exit codes: 0 when a record was written (complete, pruned or diverged), 130 when stopped by a
signal, 1 on any other error.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..definition import SweepDef
from ..record import TrialRecord, write_record
from .slurm import current_job, stop_signal

EXIT_STOPPED = 130
DIVERGED = "diverged"  # the reason of a diverged trial starts with this (not retried, see study.report_record)


def cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def build_cli_args(base_config: str, overrides: dict[str, Any], run_dir: str | os.PathLike) -> list[str]:
    args = ["--config", str(base_config)]
    for k, v in overrides.items():
        args.append(f"--{k}={cli_value(v)}")
    args.append(f"--trainer.default_root_dir={run_dir}")
    return args


def build_point(base_config: str, overrides: dict[str, Any]):
    """The LightningCLI of one grid point as a trial resolves it (base config + ``overrides``),
    built but not run, without a logger or run directory: its ``model``, ``datamodule``,
    ``trainer`` and ``config``, for measuring a point without training it."""
    import tempfile

    from lightning_modules.cli import main as cli_main
    with tempfile.TemporaryDirectory() as tmp:
        return cli_main(build_cli_args(base_config, {**overrides, "trainer.logger": False}, tmp), run=False)


def trial_overrides(sweep: SweepDef, devices_per_trial: int, *layers: dict[str, Any]) -> dict[str, Any]:
    """The CLI overrides of a trial: the sweep's, then ``layers`` in order, then the defaults of
    a sweep trial (no progress bar; DDP on ``devices_per_trial`` devices)."""
    out = dict(sweep.overrides)
    for layer in layers:
        out.update(layer)
    out.setdefault("trainer.enable_progress_bar", False)
    if devices_per_trial > 1:
        out.setdefault("trainer.devices", devices_per_trial)
        out.setdefault("trainer.strategy", "ddp")
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit, with ``-dirty`` when a tracked file outside ``results/``
    differs from it (a study's journal and trial records there change while it runs: output,
    not code); None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    from odconv.timing import cpu_name

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name()}
    for dist in ("torch", "lightning", "torchmetrics", "optuna", "numpy", "jsonargparse", "pandas"):
        out[dist] = importlib.metadata.version(dist)  # all required dependencies
    import torch
    out["cuda"] = str(torch.version.cuda)
    if torch.cuda.is_available():
        try:
            out["gpu"] = torch.cuda.get_device_name(0)
            out["cudnn"] = str(torch.backends.cudnn.version())
        except RuntimeError:  # a broken CUDA driver: these fields are informational
            pass
    return out


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _val_history_callback():
    from lightning.pytorch.callbacks import Callback

    class ValHistory(Callback):
        """Per-epoch val metrics; saved in checkpoints, so a resumed trial keeps its history."""

        def __init__(self, trial=None):
            self.history: list[dict[str, float]] = []
            self.trial = trial  # optuna trial for pruning (tuning stage only)

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            row = {"epoch": int(trainer.current_epoch)}
            for k in ("val/acc_top1", "val/acc_top5", "val/loss"):
                if k in m:
                    row[k] = float(m[k])
            self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
            if self.trial is not None and "val/acc_top1" in row:
                prune = False
                if trainer.is_global_zero:
                    self.trial.report(row["val/acc_top1"], row["epoch"])
                    prune = bool(self.trial.should_prune())
                prune = trainer.strategy.broadcast(prune, src=0)  # every DDP rank stops together
                if prune:
                    import optuna
                    raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (val/acc_top1 {row['val/acc_top1']:.4f})")

        def state_dict(self):
            return {"history": list(self.history)}

        def load_state_dict(self, state_dict):
            self.history = list(state_dict.get("history", []))

    return ValHistory


class TrialStopped(Exception):
    """The fit stopped on the SLURM warning signal after saving its checkpoint."""


class StopFlag:
    """Set by the SLURM warning signal's handler (installed by :meth:`install`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self, signum: signal.Signals) -> None:
        def handler(received: int, frame: Any) -> None:
            self.signum = received
        signal.signal(signum, handler)


def _stop_on_signal_callback(flag: StopFlag, last_ckpt: Path):
    from lightning.pytorch.callbacks import Callback

    class StopOnSignal(Callback):
        """After each training step: if the warning signal came (on any rank), save
        ``last_ckpt`` at this step (written aside, then renamed: a kill mid-write leaves the
        previous one) and stop the fit by raising :class:`TrialStopped`. On an epoch's last
        step it stops at the epoch's end instead, after that epoch's validation: Lightning
        (2.6) resumed from a checkpoint of an epoch's last step skips that epoch's validation."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 < trainer.num_training_batches:
                self._stop_if_signalled(trainer)

        def on_train_epoch_end(self, trainer, pl_module):
            self._stop_if_signalled(trainer)

        def _stop_if_signalled(self, trainer) -> None:
            if not trainer.strategy.reduce_boolean_decision(flag.signum is not None, all=False):
                return
            tmp = last_ckpt.with_name(last_ckpt.name + ".tmp")
            trainer.save_checkpoint(tmp)
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                os.replace(tmp, last_ckpt)
                name = signal.Signals(flag.signum).name if flag.signum else "a signal on another rank"
                print(f"trial stopped by {name}: saved {last_ckpt} at epoch {trainer.current_epoch} "
                      f"step {trainer.global_step}", file=sys.stderr, flush=True)
            raise TrialStopped(f"stopped at step {trainer.global_step}")

    return StopOnSignal()


def measure_costs(lm, datamodule, device, opts: dict[str, Any]) -> dict[str, Any]:
    """The record's cost fields of the trained network ``lm.model`` (measured on a copy, in fp32):
    ``params_count``, ``macs`` (per image), ``measure_device`` and, unless ``opts["enabled"]`` is
    false, ``train_throughput`` (img/s of the training step at ``throughput_batch_size``, default the
    data's batch size), ``latency_ms`` per batch of ``latency_batch_sizes`` (default 1 and 64; also
    ``latency_b1_ms``, ``latency_b64_ms``) and ``peak_memory_mb`` of one training step
    (:func:`odconv.bench.measurement.measure_model_costs`, ``repeats`` rounds, default 5)."""
    from odconv.bench.measurement import measure_model_costs

    size = int(datamodule.image_size)
    timed = bool(opts.get("enabled", True))
    batch = int(opts.get("throughput_batch_size") or datamodule.batch_size)
    latency_batches = [int(b) for b in opts.get("latency_batch_sizes", [1, 64])]
    repeats = int(opts.get("repeats", 5))
    net = copy.deepcopy(lm.model).to(device)  # the training steps move BatchNorm statistics
    costs = measure_model_costs({"net": net}, device, batch=batch, input_size=(3, size, size),
                                num_classes=int(datamodule.num_classes), timed=timed, train_rounds=repeats,
                                train_warmup=1, latency_batches=latency_batches, latency_rounds=repeats)["net"]
    out: dict[str, Any] = {"params_count": costs.params, "macs": costs.macs, "measure_device": str(device)}
    if not timed:
        return out
    out["train_throughput"] = costs.train_images_per_s
    out["latency_ms"] = {str(b): 1000.0 * costs.latency_s(b) for b in latency_batches}
    for b in (1, 64):
        if b in latency_batches:
            out[f"latency_b{b}_ms"] = 1000.0 * costs.latency_s(b)
    out["peak_memory_mb"] = costs.peak_memory_bytes / 2**20
    return out


def _has(obj, method: str) -> bool:
    """Whether ``obj`` (a LightningModule or DataModule) overrides Lightning's ``method``."""
    from lightning.pytorch.utilities.model_helpers import is_overridden
    try:
        return is_overridden(method, obj)
    except ValueError:  # not a Lightning class: is_overridden has no parent to compare with
        return hasattr(obj, method)


def resolved_config(cli) -> dict[str, Any]:
    """The CLI's resolved config as plain data (what the record keeps); values jsonargparse
    cannot serialize are kept as their ``str``."""
    import yaml
    try:
        return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_validation=True)) or {}
    except (TypeError, yaml.YAMLError):  # dump: a value the parser cannot serialize
        try:
            return json.loads(json.dumps(cli.config.as_dict(), default=str))
        except (TypeError, ValueError):  # e.g. a circular reference
            return {"unavailable": True}


def run_trial(spec: dict[str, Any], stop: StopFlag | None = None) -> int:
    """Run the trial described by ``spec`` (written by the worker); returns the exit code."""
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_dir = Path(spec["run_dir"])
    record_path = Path(spec["record_path"])
    threads = os.environ.get("SWEEP_THREADS")
    import torch
    if threads:
        torch.set_num_threads(int(threads))
    rank0 = (int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
             and os.environ.get("NODE_RANK", "0") == "0")

    job = current_job()
    rec = TrialRecord(sweep=spec["sweep"], grid_key=spec["grid_key"], variant=spec["variant"], params=spec["params"],
                      seed=spec.get("seed"), status="failed", attempt=int(spec.get("attempt", 0)),
                      trial_number=spec.get("trial_number"), cli_args=list(spec["cli_args"]),
                      git_commit=spec.get("git_commit"), host=platform.node(),
                      devices=os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu", started_at=started,
                      slurm_job_id=job.job_id if job else None, slurm_node=job.node if job else None)

    def finish(status: str, reason: str | None = None) -> int:
        rec.status, rec.reason = status, reason
        rec.wall_time_s = time.time() - t0
        rec.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if rank0:
            write_record(record_path, rec)
        return 0

    optuna_trial = None
    if spec.get("prune_study"):  # a tuning trial reports val accuracy every epoch to its pruner
        from . import study as S
        storage = S.make_storage(spec.get("prune_storage"), spec["sweep"], spec.get("results_root", "results"))
        study = S.load_study(storage, spec["prune_study"], pruner=S.make_pruner(spec.get("pruner", "median")))
        optuna_trial = study.trial_handle(int(spec["prune_trial_number"]))

    import warnings
    # sys.argv stays the trial command on purpose: Lightning's DDP launcher re-runs it for ranks > 0
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        from lightning_modules.cli import main as cli_main
        cli = cli_main(list(spec["cli_args"]), run=False)
    except SystemExit as e:  # jsonargparse reports config errors by exiting
        rec.reason = f"bad config (LightningCLI exited with {e.code}); see {run_dir / 'train.log'}"
        finish("failed", rec.reason)
        return 1
    rec.versions = library_versions()
    rec.config = resolved_config(cli)
    rec.placement = (rec.config.get("model") or {}).get("placement")
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    rec.synthetic = bool(getattr(dm, "synthetic", False) or "synthetic" in type(dm).__name__.lower())
    # (data that cannot be set up fails here as it would in the fit: exit 1, see main)
    dm.setup("fit")
    rec.data = json.loads(json.dumps(dm.describe(), default=str))
    ValHistory = _val_history_callback()
    hist = ValHistory(optuna_trial)
    trainer.callbacks.append(hist)

    last = run_dir / "checkpoints" / "last.ckpt"
    if stop is not None:
        last.parent.mkdir(parents=True, exist_ok=True)
        trainer.callbacks.append(_stop_on_signal_callback(stop, last))
    ckpt = str(last) if last.exists() else None
    rec.resumed_from = ckpt
    # read before the fit: the fit's checkpoint callback may overwrite last.ckpt
    start_epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1 if ckpt else 0
    import optuna
    fit_start = time.time()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    except FloatingPointError as e:
        # the training module's report of a non-finite loss (ImageClassifier(stop_on_nonfinite=True))
        rec.val_history = hist.history
        return finish("failed", f"{DIVERGED}: {e}")
    except optuna.TrialPruned as e:
        rec.val_history = hist.history
        rec.epochs = len(hist.history)
        h = hist.history[-1] if hist.history else {}
        rec.final_val_top1 = h.get("val/acc_top1")
        return finish("pruned", str(e))
    rec.fit_time_s = time.time() - fit_start
    if getattr(trainer, "interrupted", False):
        raise KeyboardInterrupt("fit interrupted")
    m = trainer.callback_metrics
    rec.val_history = hist.history
    rec.epochs = int(trainer.current_epoch)
    last_row = hist.history[-1] if hist.history else {}
    rec.final_val_top1 = _finite(m.get("val/acc_top1", last_row.get("val/acc_top1")))
    rec.final_val_top5 = _finite(m.get("val/acc_top5", last_row.get("val/acc_top5")))
    rec.final_val_loss = _finite(m.get("val/loss", last_row.get("val/loss")))
    if hist.history:
        best = max(hist.history, key=lambda h: h.get("val/acc_top1", -1.0))
        rec.best_val_top1 = best.get("val/acc_top1")
        rec.best_epoch = best["epoch"]
        rec.best_val_top5 = max(h.get("val/acc_top5", -1.0) for h in hist.history)
    samples = len(dm.train_set)
    if isinstance(trainer.limit_train_batches, int):
        samples = min(samples, trainer.limit_train_batches * dm.batch_size)
    epochs_run = rec.epochs - start_epoch
    if rec.fit_time_s and epochs_run > 0:
        rec.fit_throughput = samples * epochs_run / rec.fit_time_s

    has_test = getattr(dm, "has_test_set", None)
    if has_test is None:
        has_test = _has(dm, "test_dataloader")
    if spec.get("test", True) and has_test:
        res = trainer.test(model, datamodule=dm, verbose=False)
        if res:
            r = res[0]
            rec.test_top1, rec.test_top5, rec.test_loss = (_finite(r.get("test/acc_top1")),
                                                           _finite(r.get("test/acc_top5")),
                                                           _finite(r.get("test/loss")))
    if not trainer.is_global_zero:
        return 0
    try:
        device = trainer.strategy.root_device
        for k, v in measure_costs(model, dm, device, spec.get("measure", {})).items():
            setattr(rec, k, v)
    # Any failure, whatever its type: a cost measurement must not lose a finished fit's record.
    except Exception as e:  # noqa: BLE001
        rec.reason = f"cost measurement failed: {e!r}"
    metric = spec.get("metric") or ("test/acc_top1" if rec.test_top1 is not None else "val/acc_top1")
    rec.metric = metric
    rec.value = {"test/acc_top1": rec.test_top1, "val/acc_top1": rec.final_val_top1,
                 "best_val/acc_top1": rec.best_val_top1}[metric]
    if rec.value is None:
        return finish("failed", f"metric {metric} was not produced (does the config have that split?)")
    return finish("complete", rec.reason)


def prepare(base_config: str, overrides: dict[str, Any]) -> int:
    """Download / cache the dataset once before workers start (``python -m sweeps _prepare``),
    so that parallel workers do not race on it. Exit code 0 when the data is ready."""
    import tempfile
    import warnings
    warnings.filterwarnings("ignore")
    from lightning_modules import DatasetError
    from lightning_modules.cli import main as cli_main
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cli = cli_main(build_cli_args(base_config, {**overrides, "trainer.logger": False}, tmp), run=False)
            cli.datamodule.prepare_data()
        except SystemExit as e:
            return int(e.code or 2)
        except (DatasetError, OSError) as e:  # missing, corrupt or undownloadable data
            print(f"the sweep's data is not available: {e}", file=sys.stderr)
            return 3
    return 0


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
        return 130
    # Any other failure, whatever its type: the trial process reports it as exit code 1 with its
    # traceback (in train.log), which the worker records as a failed attempt.
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
