"""``odconv-sweep`` (also ``python -m sweeps``): run, resume and read ablation sweeps.

    odconv-sweep run sweeps/ablation.yaml [--storage URL] [--workers N] [--gpus 0,1,2,3]
                                          [--devices-per-trial K] [--retry-failed]
    odconv-sweep results ablation          # aggregate results/ablation/ into tables and plots
    odconv-sweep status ablation           # progress of a (running) sweep
    odconv-sweep check sweeps/x.yaml       # validate a sweep file and list its grid
    odconv-sweep dashboard ablation        # the optuna-dashboard command for its storage

``run`` options default to the environment variables STORAGE, WORKERS, GPUS and
DEVICES_PER_TRIAL (what ``make ablation`` passes), and STUDY for the study name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .definition import SweepConfigError, find_sweep_file, load_sweep


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v else None


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="odconv-sweep", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume a sweep (same command on every machine)")
    r.add_argument("sweep", help="sweep YAML path or name (e.g. smoke -> sweeps/smoke.yaml)")
    r.add_argument("--storage", default=os.environ.get("STORAGE") or None,
                   help="Optuna storage URL (postgresql://...); default: results/<sweep>/optuna.journal")
    r.add_argument("--workers", type=int, default=_env_int("WORKERS"),
                   help="CPU worker processes (no GPUs), or at most this many GPU workers")
    r.add_argument("--gpus", default=os.environ.get("GPUS") or None,
                   help="GPU ids, e.g. 0,1,2,3 (default: all visible; 'cpu' for none)")
    r.add_argument("--devices-per-trial", type=int, default=_env_int("DEVICES_PER_TRIAL") or 1,
                   help="GPUs per trial (DDP) ; one worker per group of this many GPUs")
    r.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    r.add_argument("--study", default=os.environ.get("STUDY") or None, help="study name (default: the sweep name)")
    r.add_argument("--retry-failed", action="store_true", help="re-queue grid points whose trials all failed")
    r.add_argument("--no-aggregate", action="store_true", help="do not write the tables and plots at the end")
    r.add_argument("--progress-interval", type=float, default=5.0)
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
    c = sub.add_parser("check", help="validate a sweep file and list its grid points")
    c.add_argument("sweep")
    e = sub.add_parser("estimate", help="expected wall time of a sweep here, from throughput measured on the device")
    e.add_argument("sweep")
    e.add_argument("--device", default=os.environ.get("DEVICE") or ("cuda" if _cuda() else "cpu"),
                   help="cpu or cuda[:i] (default: cuda when available)")
    e.add_argument("--workers", type=int, default=_env_int("WORKERS") or 1,
                   help="workers sharing the sweep (e.g. the number of GPUs over all machines)")
    e.add_argument("--overhead", type=float, default=None,
                   help="seconds per trial beyond fit and eval (start-up, checkpoints, cost measurements); default 25")
    e.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
    d = sub.add_parser("dashboard", help="print the optuna-dashboard command for a sweep's storage")
    d.add_argument("sweep")
    d.add_argument("--storage", default=os.environ.get("STORAGE") or None)
    d.add_argument("--results-root", default=os.environ.get("RESULTS", "results"))
    return ap


def _sweep_name(arg: str, results_root: str) -> str:
    from pathlib import Path
    if Path(results_root, arg, "sweep.json").exists():
        return arg
    return load_sweep(find_sweep_file(arg), check_files=False).name


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "_worker":
        from .worker import main as worker_main
        return worker_main(argv[1:])
    if argv and argv[0] == "_prepare":
        import json
        from .trial import prepare
        spec = json.loads(open(argv[1]).read())
        return prepare(spec["base_config"], spec["overrides"])
    if argv and argv[0] == "_trial":
        from .trial import main as trial_main
        return trial_main(argv[1])
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[sweep] %(message)s")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if a.cmd == "run":
            from .runner import run_sweep
            sweep = load_sweep(a.sweep)
            return run_sweep(sweep, a.storage, a.workers, a.gpus, a.devices_per_trial, a.results_root, a.study,
                             a.retry_failed, not a.no_aggregate, a.progress_interval)
        if a.cmd == "results":
            from .aggregate import aggregate, load_sweep_for_results
            name = _sweep_name(a.sweep, a.results_root)
            st = None
            if a.storage:
                from . import study as S
                sw = load_sweep_for_results(name, a.results_root)
                st = S.load_study(S.make_storage(a.storage, sw.name, a.results_root, heartbeat=False), a.study or sw.name)
            out = aggregate(name, a.results_root, study=st)
            print(out["summary_md"].read_text())
            print(f"wrote {out['summary_csv']}, {out['summary_md']}, {out['attention_csv']}, "
                  + ", ".join(str(p) for p in out["plots"]), file=sys.stderr)
            return 0
        if a.cmd == "status":
            from . import study as S
            from .aggregate import load_sweep_for_results
            sweep = load_sweep_for_results(_sweep_name(a.sweep, a.results_root), a.results_root)
            storage = S.make_storage(a.storage, sweep.name, a.results_root, heartbeat=False)
            st = S.load_study(storage, a.study or sweep.name)
            p = S.progress(st, [pt.key for pt in sweep.points()])
            print(S.format_progress(p, 1))
            for key, state in sorted(p.points.items()):
                print(f"  {state:8s} {key}")
            return 0
        if a.cmd == "check":
            sweep = load_sweep(a.sweep)
            pts = sweep.points()
            print(f"{sweep.source}: OK: sweep '{sweep.name}', base {sweep.base_config}, {len(pts)} grid points "
                  f"({len(sweep.variants())} variants)" + (", with a tuning stage" if sweep.tune else ""))
            for p in pts:
                print("  " + p.key)
            return 0
        if a.cmd == "estimate":
            from .estimate import main as estimate_main
            return estimate_main(load_sweep(a.sweep), a.device, a.workers, a.overhead, a.repeats)
        if a.cmd == "dashboard":
            from . import study as S
            name = _sweep_name(a.sweep, a.results_root)
            print(f"optuna-dashboard {S.storage_label(a.storage, name, a.results_root)}")
            return 0
    except SweepConfigError as e:
        print(f"odconv-sweep: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
