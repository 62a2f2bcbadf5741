"""Where a study keeps its files: every path under ``results/<sweep>/`` is named here, and only
here. The running side writes the journal, snapshot, run folders and trial records; the
reporting side reads records and bench tables and writes the tables and plots.

::

    results/<sweep>/
      optuna.journal        the Optuna journal storage (unless a database URL is given)
      sweep.json            the resolved sweep definition the study runs (snapshot)
      analysis_plans.json   each analysis plan in force, with the time it was recorded
      tuned.json            the tuning stage's chosen values per variant
      trials/<slug>.json    one trial record per grid point
      runs/<slug>/          a fit's working folder (checkpoints, logs, progress file)
      tune/<variant>/tNNN/  a tuning trial's working folder; tune/trials/ its records
      slurm/                submitit's job folders and jobs.txt
      bench/models.csv|md   the sweep bench's cost table (``make sweep-bench``)
      summary.csv|md, ...   the report (:data:`REPORT_FILES`, isocost_<axis>.png, ...)
    results/bench/models.csv  the general benchmark's model table (a fallback cost table)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "results"


@dataclass(frozen=True)
class SweepLayout:
    """The files of study ``sweep`` under ``root`` (``results`` by default)."""

    sweep: str
    root: Path = Path(DEFAULT_ROOT)

    def __init__(self, sweep: str, root: str | os.PathLike = DEFAULT_ROOT) -> None:
        object.__setattr__(self, "sweep", sweep)
        object.__setattr__(self, "root", Path(root))

    @property
    def dir(self) -> Path:
        return self.root / self.sweep

    # --- the running side ---------------------------------------------------------------
    @property
    def journal(self) -> Path:
        return self.dir / "optuna.journal"

    @property
    def snapshot(self) -> Path:
        return self.dir / "sweep.json"

    @property
    def plans(self) -> Path:
        """The analysis plans log (sweeps.analysis_plan): each plan with the time it was recorded."""
        return self.dir / "analysis_plans.json"

    @property
    def tuned(self) -> Path:
        return self.dir / "tuned.json"

    @property
    def trials(self) -> Path:
        return self.dir / "trials"

    def record(self, slug: str) -> Path:
        return self.trials / f"{slug}.json"

    @property
    def runs(self) -> Path:
        return self.dir / "runs"

    def run_dir(self, slug: str) -> Path:
        return self.runs / slug

    @property
    def prepare_spec(self) -> Path:
        return self.runs / "prepare_spec.json"

    def tune_run_dir(self, variant_slug: str, number: int) -> Path:
        return self.dir / "tune" / variant_slug / f"t{number:03d}"

    def tune_record(self, variant_slug: str, number: int) -> Path:
        return self.dir / "tune" / "trials" / f"{variant_slug}-t{number:03d}.json"

    @property
    def slurm(self) -> Path:
        return self.dir / "slurm"

    # --- cost tables ------------------------------------------------------------------------
    @property
    def bench_table(self) -> Path:
        """The sweep bench's table (``odconv-sweep bench``); its markdown beside it."""
        return self.dir / "bench" / "models.csv"

    @property
    def general_bench_table(self) -> Path:
        """``make bench``'s model table, used when the sweep has no bench table of its own."""
        return self.root / "bench" / "models.csv"

    # --- the report ---------------------------------------------------------------------------
    def report(self, name: str) -> Path:
        """A report file: one of :data:`REPORT_FILES`, or a plot (``*.png``) named by the
        reporting code (``isocost_<axis>.png``, ``accuracy_bars.png``, ...)."""
        if name not in REPORT_FILES and not name.endswith(".png"):
            raise ValueError(f"unknown report file {name!r}; the tables are {', '.join(REPORT_FILES)}")
        return self.dir / name


#: The tables the report writes (plots are named where they are drawn).
REPORT_FILES = (
    "summary.csv", "summary.md", "reruns.csv", "attention.csv", "attention.md", "effects.csv",
    "conditional_effects.csv", "effects.md", "effects.png", "outliers.csv", "effects_without_outliers.csv",
    "val_curves.csv", "val_curves.png", "isocost.csv", "isocost_frontier.csv", "isocost.md",
    "contrasts.csv", "contrasts.md", "claims.md",
)


def report_layout(out_dir: str | os.PathLike) -> SweepLayout:
    """The layout whose study folder is ``out_dir`` (a report written somewhere else, e.g. a test's
    temporary folder)."""
    out = Path(out_dir)
    return SweepLayout(out.name, out.parent)
