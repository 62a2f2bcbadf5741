"""Optional tuning stage (``tune:`` in the sweep YAML).

Per variant (grid point without its seed), an Optuna study ``<study>.tune.<variant>`` with a
TPE sampler (seeded) and a median pruner searches the ``tune.params`` space for
``tune.n_trials`` trials on the short schedule ``tune.overrides``, with the grid's first
seed, measuring final ``val/acc_top1`` (the test set is never used to tune) and reporting it
every epoch so the pruner can stop bad trials early. Every variant gets the same budget.
Then the grid runs with each variant's best values (written to ``results/<sweep>/tuned.json``
and into each grid trial's ``extra_overrides``). Pruning happens here only: a grid cell is
never pruned.

The same workers (one per GPU / ``WORKERS``) run the tuning trials; a re-run resumes the
studies (finished trials count toward the budget; dead ones are failed and replaced).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from . import study as S
from .definition import SEED_KEY, SweepDef, slugify

log = logging.getLogger("sweeps")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def variant_points(sweep: SweepDef) -> dict[str, dict[str, Any]]:
    """variant label -> its grid params without the seed, plus the first seed of the grid."""
    out: dict[str, dict[str, Any]] = {}
    for p in sweep.points():
        if p.variant not in out:
            out[p.variant] = dict(p.params)
    return out


def tune_study_name(base: str, variant: str) -> str:
    return f"{base}.tune.{slugify(variant)}"


def make_sampler(sweep: SweepDef) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=sweep.tune.seed, n_startup_trials=min(5, max(1, sweep.tune.n_trials // 3)))


def make_pruner(sweep: SweepDef) -> optuna.pruners.BasePruner:
    if sweep.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_tune_studies(sweep: SweepDef, storage, base: str, create: bool) -> dict[str, optuna.Study]:
    out = {}
    for v in variant_points(sweep):
        name = tune_study_name(base, v)
        if create:
            optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
        out[v] = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(sweep), pruner=make_pruner(sweep))
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


def tune_worker(sweep: SweepDef, worker) -> int:
    """The worker loop of the tuning stage (``python -m sweeps _worker --stage tune``)."""
    from .trial import build_cli_args

    studies = open_tune_studies(sweep, worker.storage, worker.study_name, create=False)
    points = variant_points(sweep)
    while not worker.stop:
        for st in studies.values():
            for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                why = S.trial_is_dead(t, sweep.stale_after_s, worker.rdb)
                if why:
                    S.fail_trial(st, t._trial_id, why, final=True)
        # the variant with the fewest trials so far (spreads workers over variants)
        open_ = [(n_counted(st), v) for v, st in studies.items() if n_counted(st) < sweep.tune.n_trials]
        if not open_:
            break
        _, v = min(open_)
        st = studies[v]
        trial = st.ask()
        if n_counted(st) > sweep.tune.n_trials:  # another worker took the last slot meanwhile
            st.tell(trial, state=TrialState.FAIL)
            st._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "over budget (race), not run")
            continue
        sampled = suggest(trial, sweep.tune.params)
        params = dict(points[v])
        params[SEED_KEY] = sweep.grid.get(SEED_KEY, [0])[0]
        for k, val in {"worker_host": S.HOST, "worker_pid": worker.pid, "worker_start": worker.start,
                       "heartbeat": time.time(), "variant": v, "claimed_at": time.time()}.items():
            st._storage.set_trial_user_attr(trial._trial_id, k, val)
        run_dir = worker.res_dir / "tune" / slugify(v) / f"t{trial.number:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = {**sweep.overrides, **sweep.tune.overrides, **params, **sampled}
        overrides.setdefault("trainer.enable_progress_bar", False)
        if worker.devices_per_trial > 1:
            overrides.setdefault("trainer.devices", worker.devices_per_trial)
            overrides.setdefault("trainer.strategy", "ddp")
        spec = {"sweep": sweep.name, "grid_key": f"tune:{v}:{trial.number}", "variant": v, "params": params,
                "seed": params[SEED_KEY], "attempt": 0, "trial_number": trial.number, "run_dir": str(run_dir),
                "record_path": str(worker.res_dir / "tune" / "trials" / f"{slugify(v)}-t{trial.number:03d}.json"),
                "cli_args": build_cli_args(sweep.base_config, overrides, run_dir), "measure": {"enabled": False},
                "metric": "val/acc_top1", "test": False, "git_commit": worker.git, "results_root": worker.results_root,
                "prune_storage": worker.storage_url, "prune_study": st.study_name, "prune_trial_id": trial._trial_id}
        (run_dir / "trial_spec.json").write_text(json.dumps(spec, indent=1))
        rc, rec = worker.run_child(st, trial._trial_id, spec)
        if worker.stop and (rec is None or rec.status not in ("complete", "pruned")):
            S.fail_trial(st, trial._trial_id, "interrupted", final=True)
            break
        if rec is not None and rec.status == "complete" and rec.value is not None:
            st.tell(trial, rec.value)
        elif rec is not None and rec.status == "pruned":
            st.tell(trial, state=TrialState.PRUNED)
        else:
            st._storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                            (rec.reason if rec else None) or f"trial process exited with {rc}")
            st.tell(trial, state=TrialState.FAIL)
    return 130 if worker.stop else 0


def run_tuning(sweep: SweepDef, storage, storage_url: str | None, base: str, slots, results_root: str,
               sweep_json: Path, devices_per_trial: int) -> dict[str, dict[str, Any]] | None:
    """Run the tuning stage to completion; the best values per variant, or None if interrupted."""
    from .runner import spawn_workers

    studies = open_tune_studies(sweep, storage, base, create=True)
    total = sweep.tune.n_trials * len(studies)
    for _round in range(5):
        if all(n_finished(st) >= sweep.tune.n_trials for st in studies.values()):
            break
        procs = spawn_workers(slots, sweep_json, storage_url, base, results_root, devices_per_trial, stage="tune")
        last = ""
        try:
            while any(p.poll() is None for p in procs):
                done = sum(n_finished(st) for st in studies.values())
                line = f"[tune] {done}/{total} tuning trials finished ({len(studies)} variants x {sweep.tune.n_trials})"
                if line != last:
                    print(line, file=sys.stderr, flush=True)
                    last = line
                time.sleep(2)
        except KeyboardInterrupt:
            for p in procs:
                p.wait()
            return None
        if any(p.returncode == 130 for p in procs):
            return None
    # other machines may still be tuning: wait for every study to have its budget
    while not all(n_finished(st) >= sweep.tune.n_trials for st in studies.values()):
        running = sum(n_counted(st) - n_finished(st) for st in studies.values())
        if running == 0:
            log.warning("tuning budget not reached (failed trials); using the best values found")
            break
        time.sleep(10)
    best = best_overrides(sweep, studies)
    for v, b in best.items():
        log.info("tuned %s: %s", v, b)
    return best
