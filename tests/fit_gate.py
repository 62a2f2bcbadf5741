"""A Lightning callback for tests that act while a fit is under way: it holds the fit at the
start of one epoch for as long as a file exists. The test creates the file before the fit, acts
(signals, cancels) once the trials are held, and deletes the file to let them go on; unlike a
short fit raced against the test's polling, this cannot finish before the test has acted.

Used from a sweep's overrides (the trial processes import it from the repository root)::

    {"trainer.callbacks": [hold_at_epoch(gate_file)]}
"""

from __future__ import annotations

import os
import time
from typing import Any

from lightning.pytorch.callbacks import Callback


class HoldWhileFileExists(Callback):
    """Sleep at the start of epoch ``epoch`` (0-based) while ``path`` exists. Epoch 1 or later
    means the fit has saved ``last.ckpt`` once (at the end of epoch 0) before it holds."""

    def __init__(self, path: str, epoch: int = 1, poll_s: float = 0.1) -> None:
        self.path, self.epoch, self.poll_s = path, epoch, poll_s

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            while os.path.exists(self.path):
                time.sleep(self.poll_s)


def hold_at_epoch(path: os.PathLike | str, epoch: int = 1) -> dict[str, Any]:
    """The ``trainer.callbacks`` entry of a :class:`HoldWhileFileExists` (a sweep override)."""
    return {"class_path": f"{__name__}.{HoldWhileFileExists.__name__}",
            "init_args": {"path": str(path), "epoch": epoch}}
