"""``odconv-sweep`` (also ``python -m sweeps``): run, resume and read ablation sweeps.

    odconv-sweep run sweeps/ablation.yaml [--storage URL] [--workers N] [--gpus 0,1,2,3]
                                          [--devices-per-trial K] [--retry-failed]
    odconv-sweep run sweeps/ablation.yaml --launcher slurm [--slurm-jobs N] [--slurm KEY=VALUE ...]
    odconv-sweep results ablation          # aggregate results/ablation/ into tables and plots
    odconv-sweep status ablation           # progress of a (running) sweep
    odconv-sweep drain ablation            # finish the running trials, start no new one
    odconv-sweep check sweeps/x.yaml       # validate a sweep file and list its grid
    odconv-sweep plan sweeps/x.yaml        # record its analysis plan now, before any trial runs
    odconv-sweep dashboard ablation        # the optuna-dashboard command for its storage
    odconv-sweep estimate ablation         # expected wall time, measured on this machine
    odconv-sweep quote README.md [--check] # the claims blocks a document quotes, from results/*/claims.md

``run`` options default to the environment variables STORAGE, WORKERS, GPUS,
DEVICES_PER_TRIAL, LAUNCHER and SLURM_JOBS (what ``make ablation`` passes), and STUDY for the
study name. ``--launcher slurm`` submits the workers as SLURM jobs and returns (docs/slurm.md).
Exit codes: 0 done, 1 some grid points failed (``quote --check``: a block differs), 2 bad input
(one ``error:`` line), 3 the storage was unreachable for longer than the outage limit, 4 drained
with points left, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from sqlalchemy import exc as sa_exc

from lightning_modules.contract import EXIT_BAD_INPUT, EXIT_OK, EXIT_STORAGE

from ..definition import SweepConfigError, SweepDef, find_sweep_file, load_sweep
from ..layout import SweepLayout
from ..slurm_options import SlurmOptions
from .args import OneLineErrorParser, device_arg, positive_int, positive_seconds

READ_OUTAGE_LIMIT_S = 15.0  # status/results wait this long for an unreachable storage, not the run's limit


class UsageError(ValueError):
    """Bad input at the command line; the message names the value and the valid choices."""


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"environment variable {name} must be an integer, got {v!r}") from None


def _parser() -> argparse.ArgumentParser:
    ap = OneLineErrorParser(prog="odconv-sweep", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume a sweep (same command on every machine)")
    r.add_argument("sweep", help="sweep YAML path or name (e.g. smoke -> sweeps/smoke.yaml)")
    r.add_argument("--storage", default=os.environ.get("STORAGE") or None,
                   help="Optuna storage URL (postgresql://...); default: results/<sweep>/optuna.journal")
    r.add_argument("--workers", type=int, default=None,
                   help="CPU worker processes (no GPUs), or at most this many GPU workers")
    r.add_argument("--gpus", default=os.environ.get("GPUS") or None,
                   help="GPU ids, e.g. 0,1,2,3 (default: all visible; 'cpu' for none)")
    r.add_argument("--devices-per-trial", type=int, default=None,
                   help="GPUs per trial (DDP) ; one worker per group of this many GPUs")
    r.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    r.add_argument("--study", default=os.environ.get("STUDY") or None, help="study name (default: the sweep name)")
    r.add_argument("--retry-failed", action="store_true", help="re-queue grid points whose trials all failed")
    r.add_argument("--no-aggregate", action="store_true", help="do not write the tables and plots at the end")
    r.add_argument("--progress-interval", type=float, default=5.0)
    r.add_argument("--outage-limit", type=positive_seconds, default=None,
                   help="seconds every sweep process waits for an unreachable storage before stopping "
                        "(default: SWEEP_OUTAGE_LIMIT_S or 300)")
    r.add_argument("--launcher", default=os.environ.get("LAUNCHER") or "local",
                   help="local: worker processes on this machine (default); slurm: SLURM jobs, submitted, "
                        "then this command returns (env LAUNCHER)")
    r.add_argument("--slurm-jobs", type=int, default=None,
                   help="SLURM worker jobs to submit (env SLURM_JOBS; default: one per grid point left, "
                        "at most 32)")
    r.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the sweep file's slurm: section, e.g. --slurm partition=gpu "
                        "--slurm time_min=240 (after ODCONV_SLURM_* variables)")
    s = sub.add_parser("results", help="aggregate a sweep's records into summary.csv/md, attention table, plots")
    s.add_argument("sweep", help="sweep name (results/<name>/) or YAML path")
    s.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    s.add_argument("--storage", default=os.environ.get("STORAGE") or None,
                   help="also read records from this storage's study (points run on other machines)")
    s.add_argument("--study", default=os.environ.get("STUDY") or None)
    st = sub.add_parser("status", help="progress of a sweep")
    st.add_argument("sweep")
    st.add_argument("--storage", default=os.environ.get("STORAGE") or None)
    st.add_argument("--study", default=os.environ.get("STUDY") or None)
    st.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    dr = sub.add_parser("drain", help="let the running trials of a sweep finish (on every machine) and start no new "
                                      "one; `run` again goes on")
    dr.add_argument("sweep")
    dr.add_argument("--storage", default=os.environ.get("STORAGE") or None)
    dr.add_argument("--study", default=os.environ.get("STUDY") or None)
    dr.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    c = sub.add_parser("check", help="validate a sweep file and list its grid points")
    c.add_argument("sweep")
    pl = sub.add_parser("plan", help="record a sweep file's analysis plan (results/<sweep>/analysis_plans.json) "
                                     "without running a trial, to commit it before the runs")
    pl.add_argument("sweep")
    pl.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    e = sub.add_parser("estimate", help="expected wall time of a sweep here, from throughput measured on the device")
    e.add_argument("sweep")
    e.add_argument("--device", type=device_arg, default=os.environ.get("DEVICE") or None,
                   help="cpu or cuda[:i] (default: cuda when available)")
    e.add_argument("--workers", type=int, default=None,
                   help="workers sharing the sweep (e.g. the number of GPUs over all machines)")
    e.add_argument("--overhead", type=float, default=None,
                   help="seconds per trial beyond fit and eval (start-up, checkpoints, cost measurements); default 25")
    e.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
    b = sub.add_parser("bench", help="time every grid variant's model against static in one run, for the cost "
                                     "columns of the sweep's tables (results/<sweep>/bench/models.csv)")
    b.add_argument("sweep")
    b.add_argument("--device", type=device_arg, default=os.environ.get("DEVICE") or "cpu", help="cpu or cuda[:i]")
    b.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    b.add_argument("--train-repeats", type=positive_int, default=3, help="timed rounds of the training steps")
    q = sub.add_parser("quote", help="rewrite the <!-- claims:<sweep>:<block> --> blocks a markdown file quotes "
                                     "from results/<sweep>/claims.md (what `results` writes)")
    q.add_argument("document", help="markdown file, e.g. README.md")
    q.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    q.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    d = sub.add_parser("dashboard", help="print the optuna-dashboard command for a sweep's storage")
    d.add_argument("sweep")
    d.add_argument("--storage", default=os.environ.get("STORAGE") or None)
    d.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    return ap


def _results_sweep(arg: str, results_root: str):
    """The sweep a ``results``/``status``/``dashboard`` argument names: ``results/<arg>/sweep.json``
    (written by the run) if there is one, else the sweep YAML ``arg`` (a path or a name)."""
    snap = SweepLayout(arg, results_root).snapshot
    if snap.exists():
        return SweepDef.from_dict(json.loads(snap.read_text()))
    return load_sweep(find_sweep_file(arg), check_files=False)


def _open_study(storage_url: str | None, sweep_name: str, results_root: str, study_name: str):
    """The sweep's study for reading (status, results); ``UsageError`` naming the studies that
    exist when there is no such study."""
    from ..running.storage import (  # deferred: loads Optuna
        OutageGuard,
        is_rdb_url,
        journal_path,
        make_storage,
        storage_label,
    )
    from ..running.study import load_study  # deferred: loads Optuna
    _quiet_optuna()
    label = storage_label(storage_url, sweep_name, results_root)
    if not is_rdb_url(storage_url) and not journal_path(sweep_name, results_root, storage_url).exists():
        raise UsageError(f"sweep {sweep_name!r} has no storage at {label} (has it been run? pass --storage for "
                         f"a PostgreSQL study)")
    storage = make_storage(storage_url, sweep_name, results_root,
                           OutageGuard(label, limit_s=min(READ_OUTAGE_LIMIT_S, _outage_limit(None))))
    try:
        return load_study(storage, study_name)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise UsageError(f"no study {study_name!r} in {label}; studies there: {', '.join(names) or 'none'}") from None


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    # the child processes of a run (deferred: each loads only what it runs)
    if argv and argv[0] == "_worker":
        from ..running.worker import main as worker_main  # deferred: loads Optuna
        return worker_main(argv[1:])
    if argv and argv[0] == "_prepare":
        from ..running.trial import prepare  # deferred: loads Lightning
        spec = json.loads(open(argv[1]).read())
        return prepare(spec["base_config"], spec["overrides"])
    if argv and argv[0] == "_trial":
        from ..running.trial import main as trial_main  # deferred: loads Lightning
        return trial_main(argv[1])
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[sweep] %(message)s")
    try:
        return _command(a)
    except (SweepConfigError, UsageError) as e:
        print(f"odconv-sweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 (classified: storage trouble and bad storage URLs are not bugs)
        from ..running.storage import StorageDriverMissing, StorageUnavailable  # deferred: loads Optuna
        if isinstance(e, StorageUnavailable):
            print(f"odconv-sweep: error: {e}", file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(e, StorageDriverMissing):
            print(f"odconv-sweep: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        bad_url = _bad_storage_url(e)
        if bad_url:
            print(f"odconv-sweep: error: {bad_url}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


LAUNCHERS = ("local", "slurm")


def _submit(a: argparse.Namespace, sweep, workers: int | None, per_trial: int, outage_limit_s: float) -> int:
    """``run --launcher slurm``: submit the worker jobs (options: the sweep file's ``slurm:``
    section, then ODCONV_SLURM_* variables, then ``--slurm KEY=VALUE`` flags)."""
    from ..running.runner import submit_sweep  # deferred: loads Optuna and submitit
    if workers is not None or a.gpus:
        raise UsageError("--workers/WORKERS and --gpus/GPUS are for --launcher local; with --launcher slurm "
                         "use --slurm-jobs/SLURM_JOBS and the slurm: section (gpus_per_job)")
    jobs = a.slurm_jobs if a.slurm_jobs is not None else _env_int("SLURM_JOBS")
    overrides = {}
    for item in a.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--slurm takes KEY=VALUE (e.g. --slurm partition=gpu), got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            overrides[key.strip()] = value
    # SlurmOptionsError is a ValueError: one error line naming the bad key or value
    try:
        options = (sweep.slurm or SlurmOptions()).with_environment().with_overrides(**overrides)
        return submit_sweep(sweep, options, a.storage, jobs, per_trial, a.results_root, a.study, a.retry_failed,
                            outage_limit_s=outage_limit_s)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _print_jobs(sweep_name: str, results_root: str) -> None:
    """The sweep's SLURM jobs (``results/<sweep>/slurm/jobs.txt``) and their states, if it has any."""
    from ..running.slurm import job_ids_in, list_jobs  # deferred: loads submitit
    ids = job_ids_in(SweepLayout(sweep_name, results_root).slurm)
    if not ids:
        return
    try:
        jobs = list_jobs(ids)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"SLURM jobs {', '.join(ids)}: states unavailable here ({e})")
        return
    print(f"SLURM jobs ({len(ids)}):")
    for j in jobs:
        restarts = "?" if j.restarts is None else j.restarts
        print(f"  {j.job_id:>10s} {j.state:10s} {j.node or '-':12s} restarts {restarts}"
              + (f"  ({j.reason})" if j.reason else ""))


def _outage_limit(flag: float | None) -> float:
    """The run's outage limit: ``--outage-limit``, else ``SWEEP_OUTAGE_LIMIT_S``, else the default."""
    from ..running.storage import parse_outage_limit  # deferred: loads Optuna
    if flag is not None:
        return flag
    try:
        return parse_outage_limit(os.environ.get("SWEEP_OUTAGE_LIMIT_S"))
    except ValueError as e:
        raise UsageError(f"SWEEP_OUTAGE_LIMIT_S: {e}") from None


def _bad_storage_url(e: Exception) -> str | None:
    """The message for a storage URL SQLAlchemy cannot use (unknown dialect, malformed), else None."""
    if isinstance(e, (sa_exc.ArgumentError, sa_exc.NoSuchModuleError)):
        return (f"bad --storage/STORAGE URL ({str(e).splitlines()[0]}); valid: a journal file path, "
                f"postgresql://user:pass@host:5432/db, mysql://..., sqlite:///file.db")
    return None


def _cmd_run(a: argparse.Namespace) -> int:
    # deferred here and below: the running side loads Optuna (and SQLAlchemy); `check`,
    # `results` and a bad argument's error line need neither
    from ..running.runner import run_sweep
    _quiet_optuna()
    workers = a.workers if a.workers is not None else _env_int("WORKERS")
    per_trial = a.devices_per_trial if a.devices_per_trial is not None else (_env_int("DEVICES_PER_TRIAL") or 1)
    outage_limit_s = _outage_limit(a.outage_limit)
    sweep = load_sweep(a.sweep)
    if a.launcher not in LAUNCHERS:
        raise UsageError(f"--launcher/LAUNCHER must be one of {', '.join(LAUNCHERS)}, got {a.launcher!r}")
    if a.launcher == "slurm":
        return _submit(a, sweep, workers, per_trial, outage_limit_s)
    if a.slurm or a.slurm_jobs is not None:
        raise UsageError("--slurm/--slurm-jobs need --launcher slurm (or LAUNCHER=slurm)")
    try:
        return run_sweep(sweep, a.storage, workers, a.gpus, per_trial, a.results_root, a.study,
                         a.retry_failed, not a.no_aggregate, a.progress_interval, outage_limit_s=outage_limit_s)
    except ValueError as e:  # impossible worker/GPU requests (plan_slots)
        raise UsageError(str(e)) from None


def _cmd_results(a: argparse.Namespace) -> int:
    # deferred: pandas, matplotlib and statsmodels, which the run's child processes never need
    from ..reporting.aggregate import aggregate
    sw = _results_sweep(a.sweep, a.results_root)
    st = _open_study(a.storage, sw.name, a.results_root, a.study or sw.name) if a.storage else None
    out = aggregate(sw.name, a.results_root, study=st)
    print(out["summary_md"].read_text())
    print(f"wrote {out['summary_csv']}, {out['summary_md']}, {out['attention_csv']}, "
          + ", ".join(str(p) for p in out["plots"]), file=sys.stderr)
    print(out["isocost_line"], file=sys.stderr)
    return EXIT_OK


def _cmd_status(a: argparse.Namespace) -> int:
    from ..running import study as S  # deferred: loads Optuna
    sweep = _results_sweep(a.sweep, a.results_root)
    st = _open_study(a.storage, sweep.name, a.results_root, a.study or sweep.name)
    points = sweep.points()
    p = S.progress(st, [pt.key for pt in points], {pt.key: pt.variant for pt in points})
    print(S.format_progress(p, 1))
    left = S.time_left(p, 1)
    if left.paced and left.seconds is not None:
        print(f"time left takes the running trial's pace (no finished trial yet) for: {', '.join(left.paced)}")
    if left.assumed and left.seconds is not None:
        print(f"time left assumes the mean of the measured variants for: {', '.join(left.assumed)}")
    if S.drain_requested(st):
        print("drain requested: workers finish their running trials and claim no new one; `run` again goes on")
    for key, state in sorted(p.points.items()):
        extra = ""
        if state == "running":
            t = p.last_trial[key]
            who = t.user_attrs.get("worker_host")
            extra = f"  epoch {S.format_epoch(t)}  (trial {t.number}" + (
                f", {who}:{t.user_attrs.get('worker_pid')}" if who else "") + ")"
        print(f"  {state:8s} {key}{extra}")
    _print_jobs(sweep.name, a.results_root)
    return EXIT_OK


def _cmd_drain(a: argparse.Namespace) -> int:
    from ..running import study as S  # deferred: loads Optuna
    sweep = _results_sweep(a.sweep, a.results_root)
    st = _open_study(a.storage, sweep.name, a.results_root, a.study or sweep.name)
    S.request_drain(st)
    p = S.progress(st, [pt.key for pt in sweep.points()])
    print(f"drain requested for sweep {sweep.name!r}: {p.count('running')} running trial(s) finish, no new one "
          f"starts; {p.count('waiting')} waiting point(s) stay queued. `run` again goes on.")
    return EXIT_OK


def _cmd_check(a: argparse.Namespace) -> int:
    sweep = load_sweep(a.sweep)
    pts = sweep.points()
    print(f"{sweep.source}: OK: sweep '{sweep.name}', base {sweep.base_config}, {len(pts)} grid points "
          f"({len(sweep.variants())} variants)" + (", with a tuning stage" if sweep.tune else ""))
    for p in pts:
        print("  " + p.key)
    return EXIT_OK


def _cmd_plan(a: argparse.Namespace) -> int:
    from ..analysis_plan import read_plans, record_plan
    sweep = load_sweep(a.sweep)
    if sweep.analysis is None:
        raise UsageError(f"{sweep.source} has no analysis: section to record (docs/sweep-files.md#analysis-plan)")
    layout = SweepLayout(sweep.name, a.results_root)
    before = read_plans(layout)
    entry = record_plan(layout, sweep.analysis)
    kept = bool(before) and before[-1].hash == entry.hash
    records = len(list(layout.trials.glob("*.json"))) if layout.trials.is_dir() else 0
    print(f"plan {entry.hash} " + ("in force since" if kept else "recorded at") + f" {entry.recorded_at}: "
          f"{layout.plans} (commit it with the sweep file)"
          + (f" ({records} trial record(s) exist already: `results` says which the plan covers)" if records else ""))
    return EXIT_OK


def _cmd_estimate(a: argparse.Namespace) -> int:
    from ..running.estimate import main as estimate_main  # deferred: loads Lightning to build the models
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; valid: cpu")
    workers = a.workers if a.workers is not None else (_env_int("WORKERS") or 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    return estimate_main(load_sweep(a.sweep), device, workers, a.overhead, a.repeats)


def _cmd_bench(a: argparse.Namespace) -> int:
    from ..running.bench import bench_sweep  # deferred: loads Lightning to build the models
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {a.device}: no CUDA device is available here; valid: cpu")
    path = bench_sweep(load_sweep(a.sweep), a.results_root, a.device, a.train_repeats, 10,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return EXIT_OK


def _cmd_quote(a: argparse.Namespace) -> int:
    from ..reporting.claims_report import MissingClaimsBlock, quote_file  # deferred: loads pandas
    if not Path(a.document).is_file():
        raise UsageError(f"document {a.document!r} is not a file")
    try:
        changed = quote_file(Path(a.document), Path(a.results_root), check=a.check)
    except MissingClaimsBlock as e:
        raise UsageError(f"{a.document}: {e}") from None
    done = f"differ from the generated ones (`odconv-sweep quote {a.document}` rewrites them)" if a.check \
        else "rewritten"
    print(f"{a.document}: " + (f"{', '.join(changed)} {done}" if changed
                               else "every quoted block is the generated one"))
    return 1 if changed and a.check else EXIT_OK


def _cmd_dashboard(a: argparse.Namespace) -> int:
    from ..running.storage import storage_label  # deferred: loads Optuna
    name = _results_sweep(a.sweep, a.results_root).name
    print(f"optuna-dashboard {storage_label(a.storage, name, a.results_root)}")
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "results": _cmd_results, "status": _cmd_status, "drain": _cmd_drain,
            "check": _cmd_check, "plan": _cmd_plan, "estimate": _cmd_estimate, "bench": _cmd_bench,
            "quote": _cmd_quote, "dashboard": _cmd_dashboard}


def _command(a: argparse.Namespace) -> int:
    return COMMANDS[a.cmd](a)


def _quiet_optuna() -> None:
    """Optuna logs each trial's state at INFO; the sweep logs its own progress."""
    import optuna  # deferred: only the commands that open a study load Optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
