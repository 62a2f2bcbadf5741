"""Running a study: the driver (runner), its workers and their trial processes, the Optuna
storage and study bookkeeping, SLURM submission, the tuning stage, and the measurements a study
needs before or beside its fits (estimate, sweep bench). Imports Optuna, Lightning (in the trial
process) and submitit; nothing in :mod:`sweeps.reporting` imports this package."""
