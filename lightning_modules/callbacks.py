"""Callbacks and loggers of the training layer.

- :class:`TemperatureScheduler`: the attention temperature schedule of dynamic convs.
  :class:`~lightning_modules.module.ImageClassifier` adds it itself (``configure_callbacks``)
  from its ``temperature_*`` arguments, so it is configured in the ``model:`` section of an
  experiment YAML (``--model.temperature_epochs 5``) and needs no ``trainer.callbacks`` entry.
- :class:`ResumableCSVLogger`: a CSVLogger that appends to an existing ``metrics.csv``
  instead of deleting it, and drops the rows of epochs a resumed run repeats.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch import nn

from odconv.layers import TemperatureBuffer


def temperature_modules(model: nn.Module) -> list[TemperatureBuffer]:
    """Every module of ``model`` whose attention has a temperature (ODConv, DyConv)."""
    return [m for m in model.modules() if isinstance(m, TemperatureBuffer)]


def linear_temperature(progress_epochs: float, init: float = 30.0, final: float = 1.0, epochs: float = 10.0) -> float:
    """The official ODConv schedule: ``init`` at epoch 0, linearly down to ``final`` at
    ``epochs`` (fractional epochs: it moves every step), ``final`` afterwards."""
    if epochs <= 0:
        return float(final)
    frac = min(max(progress_epochs / epochs, 0.0), 1.0)
    return float(final + (init - final) * (1.0 - frac))


class TemperatureScheduler(Callback):
    """Set the temperature of every dynamic-conv attention before each training step:
    linear from ``init`` (30) to ``final`` (1) over the first ``epochs`` (10) epochs, then
    ``final``, as the official ODConv (and DyConv) training. A no-op for models without
    temperature (static convs, CondConv). Also sets it at fit start (for the sanity check and
    for a resumed run) and logs it as ``train/temperature``.
    """

    def __init__(self, init: float = 30.0, final: float = 1.0, epochs: float = 10.0) -> None:
        if not (init > 0 and final > 0):
            raise ValueError(f"temperatures must be > 0, got init={init}, final={final}")
        if epochs < 0:
            raise ValueError(f"temperature epochs must be >= 0, got {epochs}")
        self.init, self.final, self.epochs = float(init), float(final), float(epochs)
        self.current: float | None = None
        self._modules: list[TemperatureBuffer] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(init=self.init, final=self.final, epochs=self.epochs)

    def _apply(self, pl_module: L.LightningModule, progress: float) -> float | None:
        if self._modules is None:
            self._modules = temperature_modules(pl_module)
        if not self._modules:
            return None
        value = linear_temperature(progress, self.init, self.final, self.epochs)
        if value != self.current:
            for m in self._modules:
                m.update_temperature(value)
            self.current = value
        return value

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.current, self._modules = None, None
        self._apply(pl_module, float(trainer.current_epoch))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        n = trainer.num_training_batches
        frac = batch_idx / n if isinstance(n, int) and n > 0 else 0.0
        value = self._apply(pl_module, trainer.current_epoch + frac)
        if value is not None:
            pl_module.log("train/temperature", value, on_step=True, on_epoch=False)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is refreshed at *every* save point.

    lightning 2.6 only rewrites ``last.ckpt`` when a top-k checkpoint was saved at the same
    step: with ``save_top_k=1`` and a validation score that did not improve, ``last.ckpt``
    stays at the best epoch and ``--ckpt_path last`` silently repeats epochs. Here it always
    holds the latest end-of-epoch state.
    """

    _last_step_of_last: int = -1

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_of_last = trainer.global_step

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if (self.save_last and not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING
                and not trainer.sanity_checking and self._last_step_of_last != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class _AppendingWriter(ExperimentWriter):
    """ExperimentWriter that keeps (and appends to) an existing metrics.csv."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)

    def drop_rows_from_epoch(self, epoch: int) -> int:
        """Remove rows logged at ``epoch`` or later (a resumed run logs them again)."""
        self.save()
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = list(reader)

        def keep(row: dict[str, str]) -> bool:
            e = row.get("epoch", "")
            try:
                return e == "" or int(float(e)) < epoch
            except ValueError:
                return True

        kept = [r for r in rows if keep(r)]
        if len(kept) != len(rows):
            tmp = self.metrics_file_path + ".tmp"
            with self._fs.open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(kept)
            os.replace(tmp, self.metrics_file_path)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger for runs that resume in the same folder: appends to ``metrics.csv``
    (lightning's CSVLogger deletes it when the version folder exists) and, when a run
    resumes at epoch k, first drops rows of epochs >= k (left by the interrupted run).

    The CLI uses ``ResumableCSVLogger(save_dir=<default_root_dir>, name="", version="logs")``
    so that logs are at ``<default_root_dir>/logs/metrics.csv``.
    """

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ResumeLogCleanup(Callback):
    """At train start (after a checkpoint was restored) drop CSV rows of the epochs that
    will be trained again."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for lg in trainer.loggers:
            if isinstance(lg, ResumableCSVLogger):
                lg.experiment.drop_rows_from_epoch(trainer.current_epoch)


__all__ = ["RunCheckpoint", "TemperatureScheduler", "linear_temperature", "temperature_modules", "ResumableCSVLogger",
           "ResumeLogCleanup"]
