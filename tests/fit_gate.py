"""A Lightning callback for tests that act while a fit is under way: it holds the fit at the
start of one epoch for as long as a file (the gate) exists. The test creates the gate before the
fit, waits until the fit is held (:func:`held_pids`), acts (signals, cancels, stops a server),
and deletes the gate to let the fit go on; unlike a short fit raced against the test's polling,
this cannot finish before the test has acted.

Used from a sweep's overrides (the trial processes import it from the repository root)::

    {"trainer.callbacks": [hold_at_epoch(gate_file)]}

Every fit that reaches the epoch while the gate exists "arrives" at it and is numbered, across
processes, in the order of arrival (0, 1, ...; an exclusive-create file ``<gate>.arrival-<n>``
each). With ``only=n`` just the n-th arrival is held and the others pass: e.g. one trial held
while other trials of the same sweep run. A held fit writes its process id to
``<gate>.held-<n>`` before it waits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


def _arrive(gate: str) -> int:
    """This process's arrival number at ``gate`` (the first free ``<gate>.arrival-<n>``)."""
    n = 0
    while True:
        try:
            fd = os.open(f"{gate}.arrival-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return n


class HoldWhileFileExists(Callback):
    """Sleep at the start of epoch ``epoch`` (0-based) while ``path`` exists (only the
    ``only``-th fit to arrive there, when given). Epoch 1 or later means the fit has saved
    ``last.ckpt`` once (at the end of epoch 0) before it holds."""

    def __init__(self, path: str, epoch: int = 1, only: int | None = None, poll_s: float = 0.1) -> None:
        self.path, self.epoch, self.only, self.poll_s = path, epoch, only, poll_s

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch != self.epoch or not os.path.exists(self.path):
            return
        n = _arrive(self.path)
        if self.only is not None and n != self.only:
            return
        tmp = f"{self.path}.held-{n}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, f"{self.path}.held-{n}")  # never read half-written
        while os.path.exists(self.path):
            time.sleep(self.poll_s)


def hold_at_epoch(path: os.PathLike | str, epoch: int = 1, only: int | None = None) -> dict[str, Any]:
    """The ``trainer.callbacks`` entry of a :class:`HoldWhileFileExists` (a sweep override)."""
    args: dict[str, Any] = {"path": str(path), "epoch": epoch}
    if only is not None:
        args["only"] = only
    return {"class_path": f"{__name__}.{HoldWhileFileExists.__name__}", "init_args": args}


def held_pids(path: os.PathLike | str) -> dict[int, int]:
    """Arrival number -> process id of each fit that has been held at the gate ``path``
    (whether or not it still is: the test knows when it released the gate)."""
    gate = Path(path)
    held = {}
    for p in gate.parent.glob(f"{gate.name}.held-*"):
        suffix = p.name.rsplit("-", 1)[1]
        if suffix.isdigit():
            held[int(suffix)] = int(p.read_text())
    return held
