"""Callbacks and loggers of the training layer.

- :class:`TemperatureScheduler`: the attention temperature schedule of dynamic convs, the one
  the conv family chooses (:meth:`odconv.families.ConvFamily.temperature_schedule`).
  :class:`~lightning_modules.module.ImageClassifier` adds it itself (``configure_callbacks``)
  from its ``temperature_*`` arguments, so it is configured in the ``model:`` section of an
  experiment YAML (``--model.temperature_epochs 5``) and needs no ``trainer.callbacks`` entry.
- :class:`ResumableCSVLogger` and :class:`KeepEarlierMetrics`: keep the rows of an existing
  ``metrics.csv`` that Lightning's CSVLogger deletes when a run resumes (or validates/tests) in
  the same log folder, minus the rows of steps a resumed run repeats.
- :class:`EpochProgress`: how far a fit is (``<default_root_dir>/progress.json``: epochs done
  of ``max_epochs``), for whoever watches the run from outside (a sweep worker's heartbeat).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from odconv.families import TemperatureSchedule, get_conv_family, linear_temperature, temperature_modules
from odconv.spec import parse_conv_spec

from .contract import Progress, write_progress


class TemperatureScheduler(Callback):
    """Set the temperature of every dynamic-conv attention before each training step, by the
    conv family's schedule (:meth:`odconv.families.ConvFamily.temperature_schedule`, given
    ``init``, ``final``, ``epochs``). Without ``conv`` (and for ODConv and DyConv): linear from
    ``init`` (30) to ``final`` (1) over the first ``epochs`` (10) epochs, then ``final``, as the
    official ODConv (and DyConv) training. A no-op for models without temperature (static
    convs, CondConv). Also sets it at fit start (for the sanity check and for a resumed run) and
    logs it as ``train/temperature``.
    """

    def __init__(self, init: float = 30.0, final: float = 1.0, epochs: float = 10.0,
                 conv: str | None = None) -> None:
        if not (init > 0 and final > 0):
            raise ValueError(f"temperatures must be > 0, got init={init}, final={final}")
        if epochs < 0:
            raise ValueError(f"temperature epochs must be >= 0, got {epochs}")
        self.init, self.final, self.epochs = float(init), float(final), float(epochs)
        if conv is None:
            self.schedule: TemperatureSchedule | None = TemperatureSchedule(self.init, self.final, self.epochs)
        else:
            family = get_conv_family(parse_conv_spec(conv).kind)
            self.schedule = family.temperature_schedule(self.init, self.final, self.epochs)
        self.current: float | None = None
        self._modules: list[nn.Module] | None = None

    def targets(self, model: nn.Module) -> list[nn.Module]:
        """The modules of ``model`` the schedule sets (none without a schedule)."""
        return [] if self.schedule is None else list(self.schedule.targets(model))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(init=self.init, final=self.final, epochs=self.epochs)

    def _apply(self, pl_module: L.LightningModule, progress: float) -> float | None:
        if self._modules is None:
            self._modules = self.targets(pl_module)
        if not self._modules:
            return None
        value = self.schedule.value(progress)
        if value != self.current:
            for m in self._modules:
                self.schedule.setter(m, value)
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


#: The file CSVLogger writes its metrics to in its ``log_dir`` (lightning 2.4-2.6).
METRICS_FILE = "metrics.csv"
#: Where :class:`KeepEarlierMetrics` keeps the earlier rows until they are written back.
EARLIER_SUFFIX = ".earlier"
_INT = re.compile(r"-?\d+")


def read_metrics_rows(path: str) -> list[dict[str, int | float]]:
    """The rows of a CSVLogger ``metrics.csv``, empty cells left out; integers (``step``,
    ``epoch``) as ``int``, the rest as ``float`` (CSVLogger writes ``repr`` of Python floats,
    so writing them again gives the same text)."""
    with open(path, newline="") as f:
        return [{k: int(v) if _INT.fullmatch(v) else float(v) for k, v in row.items() if k and v}
                for row in csv.DictReader(f)]


@rank_zero_only
def set_aside_metrics(log_dir: str) -> None:
    """Move ``<log_dir>/metrics.csv`` to ``metrics.csv.earlier``. If that exists already (a
    run stopped before its rows were written back), keep it and drop the newer, partial file."""
    path = os.path.join(log_dir, METRICS_FILE)
    earlier = path + EARLIER_SUFFIX
    if os.path.isfile(earlier):
        if os.path.isfile(path):
            os.remove(path)
    elif os.path.isfile(path):
        os.replace(path, earlier)


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger that sets an existing ``metrics.csv`` aside (:func:`set_aside_metrics`)
    before it starts writing, where the stock one deletes it. :class:`KeepEarlierMetrics`
    then logs the rows that still hold through this logger again.

    The CLI uses ``ResumableCSVLogger(save_dir=<default_root_dir>, name="", version="logs")``
    so that logs are at ``<default_root_dir>/logs/metrics.csv``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.earlier_rows_set_aside = False

    @property
    def experiment(self) -> Any:
        """The stock writer (created on first use, after the earlier rows are set aside)."""
        if not self.earlier_rows_set_aside:
            self.earlier_rows_set_aside = True
            set_aside_metrics(self.log_dir)
        with warnings.catch_warnings():
            # the earlier rows are kept, so the writer's warning that they "will be deleted" is wrong
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            return super().experiment


class KeepEarlierMetrics(Callback):
    """Log the rows a :class:`ResumableCSVLogger` set aside (``metrics.csv.earlier``) again
    when the loop starts: all of them for validate/test/predict; for ``fit``, those of steps
    before the restored ``global_step`` (a resumed run logs the later steps again; a new fit
    from step 0 starts a new file). Then the ``.earlier`` file is removed. If a run dies before
    that, the next run in the folder finds it and uses it; if it stops before its loop starts,
    the file is put back.
    """

    def __init__(self) -> None:
        self.pending: dict[str, tuple[CSVLogger, str, list[dict[str, int | float]]]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for lg in trainer.loggers:
            path = os.path.join(lg.log_dir, METRICS_FILE) if isinstance(lg, CSVLogger) else ""
            if path and os.path.isfile(path + EARLIER_SUFFIX):
                self.pending[path] = (lg, path + EARLIER_SUFFIX, read_metrics_rows(path + EARLIER_SUFFIX))

    def _write_back(self, before_step: int | None) -> None:
        for lg, earlier, rows in self.pending.values():
            for row in rows:
                step = row.pop("step", None)
                if before_step is not None and step is not None and step >= before_step:
                    continue
                lg.log_metrics(row, step=step)
            lg.save()
            os.remove(earlier)
        self.pending = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the checkpoint restored global_step: rows from there on are logged again
        self._write_back(before_step=trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._write_back(before_step=None)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_back(before_step=None)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_back(before_step=None)

    def _put_back(self) -> None:
        # stopped before the loop started: put the file back unless the logger wrote a new one
        for path, (_, earlier, _) in self.pending.items():
            if not os.path.exists(path):
                os.replace(earlier, path)
        self.pending = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._put_back()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._put_back()


class EpochProgress(Callback):
    """Write how far the fit is to ``<default_root_dir>/progress.json``
    (:func:`lightning_modules.contract.write_progress`):
    when training starts (after a resumed checkpoint is restored) and at the end of every
    training epoch. Global rank 0 only; one small file, rewritten atomically. The CLI adds it
    to every run; a sweep worker reads it into its trial's heartbeat (``odconv-sweep status``
    shows the epoch)."""

    def __init__(self) -> None:
        self.start_epoch = 0

    def _write(self, trainer: L.Trainer, epoch: int) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        write_progress(trainer.default_root_dir,
                       Progress(epoch=int(epoch), max_epochs=max_epochs, start_epoch=self.start_epoch))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_epoch = int(trainer.current_epoch)
        self._write(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, trainer.current_epoch + 1)


__all__ = ["TemperatureScheduler", "linear_temperature", "temperature_modules", "ResumableCSVLogger",
           "KeepEarlierMetrics", "set_aside_metrics", "read_metrics_rows", "METRICS_FILE", "EpochProgress"]
