"""The workers section of the benchmark (CPU only): P processes x 1 thread against 1 process x P threads.

Training throughput of the sweeps' small CPU model with each layout, and the layout a CPU sweep
should use on the machine that measured it (:func:`preferred_cpu_workers`).
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import statistics
import time
from queue import Empty
from typing import Callable, Optional, Sequence

import torch

import odconv

from ..timing import make_train_step


def _layout_worker(model_name: str, width: float, convs: Sequence[str], batch: int, threads: int, seconds: float,
                   barrier, queue) -> None:
    """One worker process of the layout measurement: for each conv, build the model, warm up,
    wait for the other workers, then train for ``seconds`` and report the steps it made."""
    torch.set_num_threads(threads)
    for conv in convs:
        torch.manual_seed(0)
        model = odconv.build_model(model_name, num_classes=10, conv=conv, width=width).train()
        step = make_train_step(model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))
        for _ in range(2):
            step()
        barrier.wait()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        queue.put(dict(conv=conv, pid=os.getpid(), threads=torch.get_num_threads(), steps=steps,
                       seconds=time.perf_counter() - start))


def run_layout(procs: int, threads: int, model_name: str, width: float, convs: Sequence[str], batch: int,
               seconds: float) -> dict[str, list[dict]]:
    """``procs`` fresh processes of ``threads`` threads each, training side by side (each its
    own model, as sweep workers do); per conv, every process's report."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_layout_worker, args=(model_name, width, tuple(convs), batch, threads, seconds,
                                                        barrier, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    reports: list[dict] = []
    while len(reports) < procs * len(convs):
        try:
            reports.append(queue.get(timeout=5))
        except Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                for w in workers:
                    w.terminate()
                raise RuntimeError(f"a layout worker process exited with code {failed[0]}") from None
    for w in workers:
        w.join(timeout=60)
    return {conv: [r for r in reports if r["conv"] == conv] for conv in convs}


def bench_workers(cores: int, model_name: str, width: float, convs: Sequence[str], batch: int, seconds: float,
                  repeats: int, log: Callable[[str], None] = print) -> list[dict]:
    """Training throughput (images/s, all processes together) of ``cores`` processes x 1
    thread against 1 process x ``cores`` threads; the layouts alternate over ``repeats``
    (A B, B A, ...) and each row is the median over repeats."""
    layouts = [(cores, 1), (1, cores)]
    per: dict[tuple[str, int, int], list[float]] = {}
    seen_threads: dict[tuple[str, int, int], set[int]] = {}
    for rep in range(repeats):
        for procs, threads in (layouts if rep % 2 == 0 else layouts[::-1]):
            reports = run_layout(procs, threads, model_name, width, convs, batch, seconds)
            for conv, rs in reports.items():
                ips = sum(r["steps"] * batch / r["seconds"] for r in rs)
                per.setdefault((conv, procs, threads), []).append(ips)
                seen_threads.setdefault((conv, procs, threads), set()).update(r["threads"] for r in rs)
                log(f"  {conv:10s} {procs} proc x {threads} thread(s): {ips:8.1f} images/s "
                    f"({', '.join(str(r['steps']) for r in rs)} steps in {seconds:g} s)")
    rows = []
    for conv in convs:
        one = statistics.median(per[(conv, 1, cores)])
        for procs, threads in layouts:
            ips = statistics.median(per[(conv, procs, threads)])
            rows.append(dict(model=model_name, width=width, conv=conv, batch=batch, processes=procs,
                             threads_per_process=threads,
                             threads_seen=",".join(str(t) for t in sorted(seen_threads[(conv, procs, threads)])),
                             images_per_s=round(ips, 1), vs_one_process=round(ips / one, 3),
                             samples=";".join(f"{v:.1f}" for v in per[(conv, procs, threads)])))
    return rows


def preferred_cpu_workers(path: str = "results/bench/workers.csv") -> Optional[int]:
    """The worker layout a CPU sweep should use on the machine that wrote ``path`` (the
    ``workers`` section's CSV): P when P single-thread processes trained more images/s than
    one P-thread process for every conv measured, 1 when one process won for every conv, and
    None when the file is missing or the result is mixed (within noise)."""
    try:
        with open(path, newline="") as f:
            multi = [r for r in csv.DictReader(f) if int(r["processes"]) > 1]
    except FileNotFoundError:
        return None
    if not multi:
        return None
    gains = [float(r["vs_one_process"]) for r in multi]
    if all(g > 1 for g in gains):
        return int(multi[0]["processes"])
    if all(g < 1 for g in gains):
        return 1
    return None

