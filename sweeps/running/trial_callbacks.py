"""The Lightning callbacks a sweep trial adds to its fit (trial process only): the per-epoch
validation history (with the tuning stage's pruning), and the stop on SLURM's warning signal."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback

from lightning_modules.contract import VAL_LOSS, VAL_TOP1, VAL_TOP5


class ValHistory(Callback):
    """Per-epoch val metrics; saved in checkpoints, so a resumed trial keeps its history.
    ``trial``: the Optuna trial to report to and prune (tuning stage only)."""

    def __init__(self, trial: optuna.trial.Trial | None = None):
        self.history: list[dict[str, float]] = []
        self.trial = trial

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": int(trainer.current_epoch)}
        for k in (VAL_TOP1, VAL_TOP5, VAL_LOSS):
            if k in m:
                row[k] = float(m[k])
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        if self.trial is not None and VAL_TOP1 in row:
            self._prune_if_told(trainer, row)

    def _prune_if_told(self, trainer, row: dict[str, float]) -> None:
        prune = False
        if trainer.is_global_zero:
            self.trial.report(row[VAL_TOP1], row["epoch"])
            prune = bool(self.trial.should_prune())
        prune = trainer.strategy.broadcast(prune, src=0)  # every DDP rank stops together
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} ({VAL_TOP1} {row[VAL_TOP1]:.4f})")

    def state_dict(self):
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict.get("history", []))


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


class StopOnSignal(Callback):
    """After each training step: if the warning signal came (``flag``, on any rank), save
    ``last_ckpt`` at this step (written aside, then renamed: a kill mid-write leaves the
    previous one) and stop the fit by raising :class:`TrialStopped`. On an epoch's last
    step it stops at the epoch's end instead, after that epoch's validation: Lightning
    (2.6) resumed from a checkpoint of an epoch's last step skips that epoch's validation."""

    def __init__(self, flag: StopFlag, last_ckpt: Path):
        self.flag = flag
        self.last_ckpt = last_ckpt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 < trainer.num_training_batches:
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.flag.signum is not None, all=False):
            return
        tmp = self.last_ckpt.with_name(self.last_ckpt.name + ".tmp")
        trainer.save_checkpoint(tmp)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            os.replace(tmp, self.last_ckpt)
            name = signal.Signals(self.flag.signum).name if self.flag.signum else "a signal on another rank"
            print(f"trial stopped by {name}: saved {self.last_ckpt} at epoch {trainer.current_epoch} "
                  f"step {trainer.global_step}", file=sys.stderr, flush=True)
        raise TrialStopped(f"stopped at step {trainer.global_step}")
