"""The contract between a training process and whoever launches or watches it (a sweep's
worker and driver, ``odconv-sweep status``): the progress file a fit keeps, the exit codes of
the processes, the names of the logged metrics, and atomic JSON files. Standard library only
(and :mod:`odconv.atomic_files`): importing it loads neither Lightning nor Optuna, so the
reporting side and the sweep's command line can use it without the training stack."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from odconv.atomic_files import write_json_atomic

# --- exit codes -----------------------------------------------------------------------------
EXIT_OK = 0
EXIT_ERROR = 1          # any other failure (a traceback was printed)
EXIT_BAD_INPUT = 2      # bad input: one `error:` line, nothing started
EXIT_STORAGE = 3        # the study's storage stayed unreachable past the outage limit
EXIT_DRAINED = 4        # the study is drained: running trials finished, no new one started
EXIT_STOPPED = 130      # stopped by a signal (Ctrl-C, SLURM's warning); a checkpoint was kept

# --- metric names (what ``ImageClassifier`` logs; what records and reports read) -------------
VAL_TOP1 = "val/acc_top1"
VAL_TOP5 = "val/acc_top5"
VAL_LOSS = "val/loss"
TEST_TOP1 = "test/acc_top1"
BEST_VAL_TOP1 = "best_val/acc_top1"   # the best epoch's VAL_TOP1 (computed from the history)
#: The metrics a sweep may rank its trials by.
SWEEP_METRICS = (TEST_TOP1, VAL_TOP1, BEST_VAL_TOP1)


def metric_name(split: str, name: str) -> str:
    """``metric_name("val", "acc_top1")`` -> ``"val/acc_top1"``."""
    return f"{split}/{name}"


# --- the progress file ------------------------------------------------------------------------
#: The file a fit keeps in its run folder (the Trainer's ``default_root_dir``).
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class Progress:
    """How far a fit is: ``epoch`` epochs finished of ``max_epochs`` (None when the fit is
    bounded otherwise), ``start_epoch`` where this fit started (>0 when it resumed), ``time``
    the unix time of the write."""

    epoch: int
    max_epochs: int | None
    start_epoch: int = 0
    time: float = 0.0


def write_progress(run_dir: str | os.PathLike, progress: Progress) -> Path:
    """Write ``progress`` to ``<run_dir>/progress.json`` atomically (a reader never sees half a
    file); ``time`` 0 is replaced by now. Returns the path."""
    path = Path(run_dir) / PROGRESS_FILE
    data = asdict(progress)
    data["time"] = data["time"] or time.time()
    write_json_atomic(path, data)
    return path


def read_progress(run_dir: str | os.PathLike) -> Progress | None:
    """The progress written in ``run_dir`` by :func:`write_progress`; None when there is no
    readable one (not yet written, or written by something else)."""
    try:
        data = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("epoch"), int):
        return None
    max_epochs = data.get("max_epochs")
    return Progress(epoch=data["epoch"], max_epochs=max_epochs if isinstance(max_epochs, int) else None,
                    start_epoch=int(data.get("start_epoch") or 0), time=float(data.get("time") or 0.0))


__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_STORAGE", "EXIT_DRAINED", "EXIT_STOPPED",
           "VAL_TOP1", "VAL_TOP5", "VAL_LOSS", "TEST_TOP1", "BEST_VAL_TOP1", "SWEEP_METRICS", "metric_name",
           "PROGRESS_FILE", "Progress", "write_progress", "read_progress", "write_json_atomic"]
