"""sweeps: Optuna-driven, resumable ablation sweeps over the training layer, and their
aggregation into tables and plots. Entry point: ``odconv-sweep`` (:mod:`sweeps.cli`)."""

from .definition import SweepConfigError, SweepDef, load_sweep
from .grid import GridPoint
from .record import RECORD_VERSION, TrialRecord

__all__ = ["GridPoint", "SweepConfigError", "SweepDef", "load_sweep", "TrialRecord", "RECORD_VERSION"]
