"""Optional tuning stage (``tune:`` in the sweep YAML).

Per variant (grid point without its seed), an Optuna study ``<study>.tune.<variant>`` with a
TPE sampler (seeded) and a median pruner searches the ``tune.params`` space for
``tune.n_trials`` trials on the short schedule ``tune.overrides``, with the grid's first
seed, measuring the final ``val/acc_top1`` (the test set is never used to tune) and reporting it
every epoch so the pruner can stop bad trials early. Every variant gets the same budget.
Then the grid runs with each variant's best values (written to ``results/<sweep>/tuned.json``
and into each grid trial's ``extra_overrides``). Pruning happens here only: a grid cell is
never pruned.

The same workers (one per GPU / ``WORKERS``) run the tuning trials; a re-run resumes the
studies (finished trials count toward the budget; dead ones are failed and replaced).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lightning_modules.contract import EXIT_STORAGE, VAL_TOP1

from ..definition import SweepDef
from ..grid import SEED_KEY, slugify
from ..layout import SweepLayout
from .grid_queue import fail_trial
from .liveness import trial_is_dead
from .process import Slot, StopRequest, WorkerSettings, run_workers, worker_command
from .storage import ResilientStorage, StorageUnavailable
from .study import Claim, SweepStudy, create_study, drain_requested, load_study, make_pruner
from .trial_spec import build_cli_args, git_commit, trial_overrides

log = logging.getLogger("sweeps")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def variant_points(sweep: SweepDef) -> dict[str, dict[str, Any]]:
    """variant label -> its grid params without the seed, plus the first seed of the grid."""
    out: dict[str, dict[str, Any]] = {}
    for p in sweep.grid_points():
        if p.variant not in out:
            out[p.variant] = dict(p.params)
    return out


def tune_study_name(base: str, variant: str) -> str:
    return f"{base}.tune.{slugify(variant)}"


def make_sampler(sweep: SweepDef) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=sweep.tune.seed, n_startup_trials=min(5, max(1, sweep.tune.n_trials // 3)))


def open_tune_studies(sweep: SweepDef, storage: ResilientStorage, base: str, create: bool) -> dict[str, SweepStudy]:
    out = {}
    for v in variant_points(sweep):
        name = tune_study_name(base, v)
        opener = create_study if create else load_study
        out[v] = opener(storage, name, make_sampler(sweep), make_pruner(sweep.tune.pruner))
    return out


def n_counted(st: optuna.Study) -> int:
    return sum(t.state in FINISHED + (TrialState.RUNNING, TrialState.WAITING) for t in st.get_trials(deepcopy=False))


def n_finished(st: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in st.get_trials(deepcopy=False))


def suggest(trial: optuna.trial.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k, s in space.items():
        if s["type"] == "float":
            out[k] = trial.suggest_float(k, float(s["low"]), float(s["high"]), log=bool(s.get("log", False)))
        elif s["type"] == "int":
            out[k] = trial.suggest_int(k, int(s["low"]), int(s["high"]), log=bool(s.get("log", False)))
        else:
            out[k] = trial.suggest_categorical(k, s["choices"])
    return out


def best_overrides(sweep: SweepDef, studies: dict[str, optuna.Study]) -> dict[str, dict[str, Any]]:
    out = {}
    for v, st in studies.items():
        try:
            out[v] = dict(st.best_trial.params)
        except ValueError:
            log.warning("tuning of %s has no completed trial: the grid uses the base config's values", v)
            out[v] = {}
    return out


class TuneSource:
    """The tuning studies as a worker's trial source: the variant with the fewest trials so far
    (spreading workers over variants) gets a new trial sampled by its TPE sampler, until every
    variant has its budget. Dead tuning trials are failed for good (the sampler replaces them)."""

    def __init__(self, sweep: SweepDef, storage: ResilientStorage, base: str):
        self.sweep = sweep
        self.studies = open_tune_studies(sweep, storage, base, create=False)
        self.points = variant_points(sweep)

    def claim(self, worker: Any) -> Claim | None:
        """``worker``: the :class:`sweeps.running.worker.Worker` claiming (its stop flag, identity, results root)."""
        sweep = self.sweep
        quiet = worker.storage.guard.seconds_since_outage()
        while not worker.stop and not drain_requested(worker.study):
            for st in self.studies.values():
                for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    why = trial_is_dead(t, sweep.stale_after_s, quiet)
                    if why:
                        fail_trial(st, t.number, why, final=True)
            open_ = [(n_counted(st), v) for v, st in self.studies.items() if n_counted(st) < sweep.tune.n_trials]
            if not open_:
                return None
            _, v = min(open_)
            st = self.studies[v]
            trial = st.ask()
            if n_counted(st) > sweep.tune.n_trials:  # another worker took the last slot meanwhile
                trial.set_user_attr("fail_reason", "over budget (race), not run")
                st.tell(trial, state=TrialState.FAIL)
                continue
            sampled = suggest(trial, sweep.tune.params)
            params = dict(self.points[v])
            params[SEED_KEY] = sweep.grid.get(SEED_KEY, [0])[0]
            trial.set_user_attr("variant", v)
            worker.mark_claimed(trial)
            layout = SweepLayout(sweep.name, worker.results_root)
            run_dir = layout.tune_run_dir(slugify(v), trial.number)
            overrides = trial_overrides(sweep, worker.devices_per_trial, sweep.tune.overrides, params, sampled)
            spec = {"sweep": sweep.name, "grid_key": f"tune:{v}:{trial.number}", "variant": v, "params": params,
                    "seed": params[SEED_KEY], "attempt": 0, "trial_number": trial.number, "run_dir": str(run_dir),
                    "record_path": str(layout.tune_record(slugify(v), trial.number)),
                    "cli_args": build_cli_args(sweep.base_config, overrides, run_dir), "measure": {"enabled": False},
                    "metric": VAL_TOP1, "test": False, "git_commit": git_commit(),
                    "results_root": worker.results_root, "prune_storage": worker.storage_url,
                    "prune_study": st.study_name, "prune_trial_number": trial.number,
                    "pruner": sweep.tune.pruner}
            return Claim(st, trial, spec, requeue=False)
        return None


def tuning_done(sweep: SweepDef, studies: dict[str, SweepStudy]) -> bool:
    return all(n_finished(st) >= sweep.tune.n_trials for st in studies.values())


def run_tuning(sweep: SweepDef, storage: ResilientStorage, settings: WorkerSettings, slots: list[Slot],
               sweep_json: Path, stop: StopRequest) -> dict[str, dict[str, Any]] | None:
    """Run the tuning stage to completion (driver side), its workers started with ``settings``
    (whose study is the base of the tuning studies' names); the best values per variant, or
    None if interrupted or drained (``odconv-sweep drain``)."""
    base = settings.study_name
    studies = open_tune_studies(sweep, storage, base, create=True)
    base_study = load_study(storage, base)

    def halted() -> bool:
        return stop.requested or drain_requested(base_study)

    total = sweep.tune.n_trials * len(studies)
    last = ""

    def tick() -> None:
        nonlocal last
        try:
            with storage.guard.no_wait():
                done = sum(n_finished(st) for st in studies.values())
        except StorageUnavailable:
            return
        line = f"[tune] {done}/{total} tuning trials finished ({len(studies)} variants x {sweep.tune.n_trials})"
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line

    for _round in range(5):
        if halted() or tuning_done(sweep, studies):
            break
        codes = run_workers(slots, lambda slot: worker_command(sweep_json, settings, slot.index, "tune", slot.threads),
                            stop, tick)
        if EXIT_STORAGE in codes and not stop.requested:
            raise StorageUnavailable(f"a tuning worker could not reach the storage {storage.guard.label} for "
                                     f"longer than {storage.guard.limit_s:.0f} s")
    if halted():
        return None
    # other machines may still be tuning: wait for every study to have its budget
    while not tuning_done(sweep, studies):
        running = sum(n_counted(st) - n_finished(st) for st in studies.values())
        if running == 0:
            log.warning("tuning budget not reached (failed trials); using the best values found")
            break
        time.sleep(10)
        if halted():
            return None
    best = best_overrides(sweep, studies)
    for v, b in best.items():
        log.info("tuned %s: %s", v, b)
    return best
