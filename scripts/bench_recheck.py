"""Re-time the rows of results/bench/layers.csv where the default (`auto`) came out slower
than the reference, timing only those two, interleaved, with many repeats.

    .venv/bin/python scripts/bench_recheck.py [--csv results/bench/layers.csv] [--above 1.0] [--repeats 21]

On a shared 2-core machine a single entry of `make bench` (median of 3 round-robin repeats)
moves by 2x between runs; the rows that look slower are where that noise matters. Prints a
markdown table: the bench's ratio and the re-timed one (median of --repeats rounds).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odconv.bench import REFERENCE, _layer_callables, layer_shapes  # noqa: E402
from odconv.timing import time_interleaved  # noqa: E402
from sweeps.trial import git_commit  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", default="results/bench/layers.csv")
    p.add_argument("--above", type=float, default=1.0, help="re-time rows whose auto/reference ratio exceeds this")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for r in csv.DictReader(open(args.csv))
            if r["strategy"] == "auto" and float(r["time_vs_reference"]) > args.above]
    shapes = {(s.model, s.name): s for s in layer_shapes()}
    missing = sorted({f"{r['model']}:{r['layer']}" for r in rows} - {f"{m}:{n}" for m, n in shapes})
    if missing:
        p.error(f"{args.csv}: layers not among the benchmark's ODConv-4x layer shapes: {', '.join(missing)}")
    out = []
    print(f"# Re-timed rows of `{args.csv}` where auto/reference > {args.above}\n")
    print(f"Command: `python scripts/bench_recheck.py --above {args.above} --repeats {args.repeats}`; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, commit {git_commit()}. "
          "Only the reference and the strategy `auto` runs are timed, interleaved, median of the repeats.\n")
    print("| model | layer | shape | B | mode | auto runs | bench auto/ref | re-timed auto/ref |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = shapes[(r["model"], r["layer"])]
        batch, grad = int(r["batch"]), r["mode"] == "fwd+bwd"
        chosen = _layer_callables(s, batch, torch.device("cpu"), grad, ())[1]
        fns = _layer_callables(s, batch, torch.device("cpu"), grad, (REFERENCE, chosen))[0]
        fns.pop("static")
        t = time_interleaved(fns, "cpu", warmup=2, repeats=args.repeats)
        ratio = t[chosen] / t[REFERENCE]
        out.append({**r, "recheck": ratio, "recheck_runs": chosen})
        print(f"| {r['model']} | {r['layer']} | {r['shape']} | {r['batch']} | {r['mode']} | {chosen} | "
              f"{float(r['time_vs_reference']):.3f} | {ratio:.3f} |", flush=True)
    return out


if __name__ == "__main__":
    main()
