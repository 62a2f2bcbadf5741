"""Where a training step's time goes, by kind of operator, in fp32 and under bf16 autocast.

    .venv/bin/python scripts/op_breakdown.py [--widths 0.125,0.5] [--convs static,odconv1x,odconv4x]
        [--threads 2] [--rounds 3] [--out results/bench/op_breakdown.md]

For each `cifar_resnet18` width and conv: one training step at batch 128 (random data;
``odconv.timing.make_train_step``, as in ``make bench``),
profiled with torch.profiler (self CPU time of each aten operator), fp32 and bf16 rounds
interleaved, the median over ``--rounds``. Operators are grouped as convolution (forward and
backward), matmul, broadcast/elementwise and reductions (mul, sum, add, ...: where the
attentions are applied), normalisation, and the rest. It answers "which part of the step does
bf16 speed up": run it on an idle machine (timings are relative, in one process).
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from odconv import build_model
from odconv.timing import make_train_step

KINDS = {
    "convolution": {"aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution",
                    "aten::convolution", "aten::conv2d", "aten::_slow_conv2d_forward",
                    "aten::_slow_conv2d_backward", "aten::mkldnn_convolution_backward"},
    "matmul": {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul"},
    "elementwise and reductions": {"aten::mul", "aten::mul_", "aten::sum", "aten::add", "aten::add_", "aten::div",
                                   "aten::div_", "aten::sub", "aten::mean", "aten::sigmoid", "aten::_softmax",
                                   "aten::sigmoid_backward", "aten::_softmax_backward_data", "aten::im2col",
                                   "aten::col2im", "aten::copy_", "aten::clone", "aten::_to_copy"},
    "normalisation and activation": {"aten::native_batch_norm", "aten::native_batch_norm_backward",
                                     "aten::relu_", "aten::clamp_min_", "aten::threshold_backward"},
}


def kind_of(op: str) -> str:
    return next((k for k, ops in KINDS.items() if op in ops), "other")


def step_profile(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, float]:
    """Self CPU milliseconds of one training step (the benchmark's: forward, backward, SGD
    step), per operator kind and per operator (``op <name>``), and the number of operator
    calls per kind (``calls <kind>``: what the step does, independent of timing)."""
    step = make_train_step(model, x, y, torch.bfloat16 if bf16 else None)
    step()  # warm-up (oneDNN primitives, allocator)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    out: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        out[kind_of(ev.key)] += ms
        out["op " + ev.key] += ms
        out["calls " + kind_of(ev.key)] += ev.count
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.125,0.5")
    ap.add_argument("--convs", default="static,odconv1x,odconv4x")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default="results/bench/op_breakdown.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    kinds = [*KINDS, "other"]
    lines = [f"# Training step by operator kind, fp32 vs bf16 autocast ({platform.processor() or platform.machine()},"
             f" torch {torch.__version__}, {a.threads} threads)", "",
             f"`scripts/op_breakdown.py`: `cifar_resnet18`, batch {a.batch}, one training step, self CPU ms "
             f"per operator kind (torch.profiler), median of {a.rounds} interleaved rounds.", "",
             "| width | conv | precision | step ms | " + " | ".join(kinds) + " | largest operators |",
             "|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for width in [float(w) for w in a.widths.split(",")]:
        for conv in a.convs.split(","):
            torch.manual_seed(0)
            model = build_model("cifar_resnet18", conv=conv, width=width, num_classes=10)
            x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(a.rounds):
                for bf16 in (False, True):
                    runs[bf16].append(step_profile(model, x, y, bf16))
            for bf16 in (False, True):
                med = {k: statistics.median(r.get(k, 0.0) for r in runs[bf16]) for k in runs[bf16][0]}
                top = sorted(((v, k[3:]) for k, v in med.items() if k.startswith("op ")), reverse=True)[:4]
                row = [f"{width:g}", conv, "bf16" if bf16 else "fp32", f"{sum(med.get(k, 0) for k in kinds):.1f}"]
                row += [f"{med.get(k, 0):.1f}" for k in kinds]
                row.append(", ".join(f"{name.removeprefix('aten::')} {v:.0f}" for v, name in top))
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
