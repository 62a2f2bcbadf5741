"""Benchmark of the dynamic conv execution strategies (``make bench``).

    python -m odconv.bench [--quick] [--device cpu|cuda] [--out results/bench]

Writes ``layers.csv|md`` and ``models.csv|md`` under ``--out``:

* layers: every distinct dynamic-conv shape of CIFAR ResNet-18 and CIFAR MobileNetV2 (as
  ODConv-4x places it), at batch 1, 64 and 128, forward (no grad) and forward+backward:
  time and peak memory of the static conv, of every strategy and of the ``auto`` choice,
  as ratios to the static conv and to the reference ("grouped") measured in the same run.
* models: ``cifar_resnet18`` (width 1 and 0.25) and ``cifar_mobilenetv2`` with static,
  odconv1x, odconv4x, dyconv4x and condconv8x convs: training step time (batch
  ``--model-batch``), batch-1 inference latency and training peak memory, as ratios to the
  static model; dynamic models both with the default (``auto``) and the reference strategy.

Timings are medians of round-robin repeats (see :func:`odconv.timing.time_interleaved`);
compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .autotune import choose_strategy, set_strategy
from .functional import STRATEGIES, dynamic_conv2d
from .timing import make_train_step, peak_memory, time_interleaved

REFERENCE = "grouped"
DEFAULT_STRATEGIES = ("grouped", "bmm", "mix", "mix_cl", "fused", "fused_bmm")
MODEL_CONVS = ("static", "odconv1x", "odconv4x", "dyconv4x", "condconv8x")
MODELS = (("cifar_resnet18", 1.0), ("cifar_resnet18", 0.25), ("cifar_mobilenetv2", 1.0))


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, str]:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "device": str(device),
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
        info["cudnn"] = str(torch.backends.cudnn.version())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            timeout=5).stdout.strip() or "n/a"
    except Exception:  # pragma: no cover
        info["git_commit"] = "n/a"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerShape:
    model: str
    name: str
    in_ch: int
    out_ch: int
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    hw: int
    attentions: str  # active ODConv attentions, letters of "cfsk"
    n: int

    @property
    def geometry(self):
        return (self.in_ch, self.out_ch, self.k, self.stride, self.padding, self.dilation, self.groups, self.hw,
                self.attentions, self.n)

    def label(self) -> str:
        dw = " dw" if self.groups == self.in_ch == self.out_ch and self.groups > 1 else (
            f" g{self.groups}" if self.groups > 1 else "")
        return f"{self.in_ch}->{self.out_ch} k{self.k} s{self.stride}{dw} @{self.hw}x{self.hw}"


def layer_shapes(model_names=("cifar_resnet18", "cifar_mobilenetv2"), conv: str = "odconv4x",
                 all_shapes: bool = True) -> list[LayerShape]:
    """Distinct dynamic-conv shapes (first occurrence) of the models built with ``conv``.
    ``all_shapes=False`` keeps, per model, the first layer of each kind (depthwise,
    pointwise, other), input resolution and stride: one of each per stage."""
    from .models import build_model
    from .layers import DynamicConvBase

    shapes: dict[tuple, LayerShape] = {}
    for model_name in model_names:
        model = build_model(model_name, num_classes=10, conv=conv).eval()
        seen: list[tuple[str, DynamicConvBase, int]] = []
        hooks = [m.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, m, a[0].shape[-1])))
                 for name, m in model.named_modules() if isinstance(m, DynamicConvBase)]
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        for h in hooks:
            h.remove()
        for name, m, hw in seen:
            atts = getattr(m, "active_attentions", frozenset({"kernel"}))
            letters = "".join(a[0] for a in ("channel", "filter", "spatial", "kernel") if a in atts)
            s = LayerShape(model_name, name, m.in_planes, m.out_planes, m.kernel_size, m.stride, m.padding,
                           m.dilation, m.groups, hw, letters, m.kernel_num)
            kind = "dw" if m.groups > 1 and m.groups == m.in_planes else ("pw" if m.kernel_size == 1 else "conv")
            key = s.geometry if all_shapes or kind == "conv" else (model_name, kind, hw, m.stride,
                                                                   m.in_planes < m.out_planes)
            shapes.setdefault(key, s)
    return list(shapes.values())


def _layer_inputs(s: LayerShape, batch: int, device, grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, s.in_ch, s.hw, s.hw, generator=g).to(device).requires_grad_(grad)
    w = (torch.randn(s.n, s.out_ch, s.in_ch // s.groups, s.k, s.k, generator=g) * 0.1).to(device).requires_grad_(grad)
    att = {}
    sizes = {"c": ("channel", (batch, s.in_ch)), "f": ("filter", (batch, s.out_ch)),
             "s": ("spatial", (batch, s.k, s.k)), "k": ("kernel", (batch, s.n))}
    for letter in s.attentions:
        name, shape = sizes[letter]
        att[name] = torch.rand(*shape, generator=g).to(device).requires_grad_(grad)
    static_w = w[0].detach().clone().requires_grad_(grad)
    return x, w, att, static_w


def _layer_callables(s: LayerShape, batch: int, device, grad: bool, strategies):
    x, w, att, static_w = _layer_inputs(s, batch, device, grad)
    geo = dict(stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups)

    def make(name):
        def call():
            with torch.set_grad_enabled(grad):
                if name == "static":
                    out = F.conv2d(x, static_w, None, s.stride, s.padding, s.dilation, s.groups)
                else:
                    out = dynamic_conv2d(x, w, **att, **geo, strategy=name)
                if grad:
                    out.backward(torch.ones_like(out))
        return call

    with torch.set_grad_enabled(grad):
        chosen = choose_strategy(x, w, **att, **geo)
    return {name: make(name) for name in ("static", *strategies)}, chosen


def bench_layers(shapes, batches, strategies, device, repeats: int, max_seconds: float, log=print) -> list[dict]:
    rows: list[dict] = []
    for s in shapes:
        for batch in batches:
            for mode, grad in (("fwd", False), ("fwd+bwd", True)):
                fns, chosen = _layer_callables(s, batch, device, grad, strategies)
                times = time_interleaved(fns, device, warmup=1, repeats=repeats, max_seconds=max_seconds)
                mems = {name: peak_memory(fn, device) for name, fn in fns.items()}
                t_static, t_ref = times["static"], times[REFERENCE]
                m_static, m_ref = max(mems["static"], 1), max(mems[REFERENCE], 1)
                for name in (*fns, "auto"):
                    src = chosen if name == "auto" else name
                    rows.append(dict(
                        model=s.model, layer=s.name, shape=s.label(), in_ch=s.in_ch, out_ch=s.out_ch, k=s.k,
                        stride=s.stride, groups=s.groups, hw=s.hw, n=s.n, attentions=s.attentions, batch=batch,
                        mode=mode, strategy=name, runs=src, time_ms=round(times[src] * 1e3, 3),
                        peak_mb=round(mems[src] / 2 ** 20, 3), time_vs_static=round(times[src] / t_static, 3),
                        time_vs_reference=round(times[src] / t_ref, 3), mem_vs_static=round(mems[src] / m_static, 3),
                        mem_vs_reference=round(mems[src] / m_ref, 3)))
                log(f"  {s.label():28s} B={batch:<3d} {mode:7s} static {t_static * 1e3:8.2f} ms | "
                    + " ".join(f"{n} {times[n] / t_static:.2f}" for n in strategies)
                    + f" | auto={chosen} {times[chosen] / t_ref:.2f}x ref")
    return rows


# ------------------------------------------------------------------------------ models
def bench_models(models, convs, batch: int, device, repeats: int, max_seconds: float, reference: str = "all",
                 log=print) -> list[dict]:
    from .models import build_model

    rows: list[dict] = []
    for model_name, width in models:
        entries = []
        with_ref = reference == "all" or (reference == "small" and width < 1)
        for conv in convs:
            strategies = ["auto"] + ([REFERENCE] if with_ref and conv != "static" else [])
            for strategy in strategies:
                entries.append((conv, strategy if conv != "static" else "-"))
        train_fns, infer_fns, models_ = {}, {}, {}
        for conv, strategy in entries:
            torch.manual_seed(0)
            model = build_model(model_name, num_classes=10, conv=conv, width=width).to(device)
            if conv != "static":
                set_strategy(model, strategy)
            x = torch.randn(batch, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            key = f"{conv}|{strategy}"
            models_[key] = model
            train_fns[key] = _train_fn(model, x, y)
            infer_fns[key] = _infer_fn(model, torch.randn(1, 3, 32, 32, device=device))
        t_train = time_interleaved(train_fns, device, warmup=1, repeats=repeats, max_seconds=max_seconds)
        t_infer = time_interleaved(infer_fns, device, warmup=2, repeats=max(repeats, 5), max_seconds=max_seconds)
        mem = {key: peak_memory(fn, device) for key, fn in train_fns.items()}
        base = "static|-"
        for conv, strategy in entries:
            key = f"{conv}|{strategy}"
            rows.append(dict(
                model=model_name, width=width, conv=conv, strategy=strategy, batch=batch,
                params_m=round(sum(p.numel() for p in models_[key].parameters()) / 1e6, 3),
                train_step_ms=round(t_train[key] * 1e3, 2), latency_b1_ms=round(t_infer[key] * 1e3, 3),
                train_peak_mb=round(mem[key] / 2 ** 20, 2),
                train_vs_static=round(t_train[key] / t_train[base], 3),
                latency_vs_static=round(t_infer[key] / t_infer[base], 3),
                mem_vs_static=round(mem[key] / max(mem[base], 1), 3)))
            r = rows[-1]
            log(f"  {model_name} w{width} {conv:10s} {strategy:8s} train {r['train_step_ms']:9.1f} ms "
                f"({r['train_vs_static']:.2f}x)  latency {r['latency_b1_ms']:7.2f} ms ({r['latency_vs_static']:.2f}x)  "
                f"mem {r['train_peak_mb']:8.1f} MB ({r['mem_vs_static']:.2f}x)")
        for model in models_.values():
            model.cpu()
    return rows


def _train_fn(model: nn.Module, x, y):
    model.train()
    step = make_train_step(model, x, y)
    return step


def _infer_fn(model: nn.Module, x):
    def call():
        was = model.training
        model.eval()
        with torch.inference_mode():
            model(x)
        model.train(was)
    return call


# ------------------------------------------------------------------------------ output
def write_csv(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _md_table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def _md_header(title: str, info: dict[str, str], args) -> str:
    lines = [f"# {title}", "", f"Command: `python -m odconv.bench {' '.join(args)}`".rstrip(), ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def layers_markdown(rows: list[dict], strategies, info, argv) -> str:
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        keyed.setdefault((r["model"], r["shape"], r["attentions"], r["n"], r["batch"], r["mode"]), {})[r["strategy"]] = r
    md = [_md_header("Dynamic conv layers: strategies against the static conv and the reference", info, argv)]
    md.append("Each row: one dynamic-conv shape (ODConv-4x attentions as the model builds them: c=channel, "
              "f=filter, s=spatial, k=kernel; n kernels), batch B, forward (no grad) or forward+backward. "
              "Strategy columns are time (then peak memory) as a multiple of the static conv of the same shape; "
              "`auto` is the default's choice and its multiple of the reference (`grouped`).\n")
    for what, key, ref_key in (("Time", "time_vs_static", "time_vs_reference"),
                               ("Peak memory", "mem_vs_static", "mem_vs_reference")):
        header = ["model", "shape", "att", "B", "mode", "static " + ("ms" if what == "Time" else "MB"),
                  *strategies, "auto", "auto / ref"]
        lines = []
        for (model, shape, att, n, batch, mode), d in keyed.items():
            st = d["static"]
            lines.append([model.replace("cifar_", ""), shape, f"{att} n{n}", batch, mode,
                          st["time_ms"] if what == "Time" else st["peak_mb"],
                          *[f"{d[s][key]:.2f}" for s in strategies], d["auto"]["runs"],
                          f"{d['auto'][ref_key]:.2f}"])
        md.append(f"## {what} (x static)\n\n" + _md_table(header, lines) + "\n")
    worst = max((r["time_vs_reference"] for r in rows if r["strategy"] == "auto"), default=float("nan"))
    md.append(f"Largest time of `auto` relative to the reference over all rows: {worst:.2f}x.\n")
    return "\n".join(md)


def models_markdown(rows: list[dict], info, argv) -> str:
    md = [_md_header("Whole models: dynamic convs against the static model", info, argv)]
    md.append("Training step (forward + backward + SGD step, batch B, train mode), batch-1 inference latency "
              "(eval, inference mode) and training peak memory, each also as a multiple of the static model. "
              "`auto` is the default strategy choice; `grouped` the reference algorithm.\n")
    header = ["model", "width", "conv", "strategy", "B", "params (M)", "train step ms", "x static",
              "latency ms", "x static", "train peak MB", "x static"]
    lines = [[r["model"], r["width"], r["conv"], r["strategy"], r["batch"], r["params_m"], r["train_step_ms"],
              f"{r['train_vs_static']:.2f}", r["latency_b1_ms"], f"{r['latency_vs_static']:.2f}", r["train_peak_mb"],
              f"{r['mem_vs_static']:.2f}"] for r in rows]
    md.append(_md_table(header, lines) + "\n")
    return "\n".join(md)


# -------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m odconv.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: two tiny layer shapes and one tiny model")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", default="results/bench", help="output directory")
    p.add_argument("--batches", default=None, help="layer batch sizes, comma-separated (default 1,64,128)")
    p.add_argument("--model-batch", type=int, default=None, help="training batch of the model benchmark (64)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help=f"strategies to time (always with the reference); available: {', '.join(sorted(STRATEGIES))}")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per entry")
    p.add_argument("--max-seconds", type=float, default=6.0,
                   help="time budget per entry; slower entries get fewer repeats (at least one)")
    p.add_argument("--all-shapes", action="store_true",
                   help="every distinct layer shape (36) instead of one per kind, resolution and stride (21)")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--reference-models", default="small", choices=("small", "all", "none"),
                   help="also time dynamic models with the reference strategy: for models of width < 1 only "
                        "(default; the reference is slow), for all, or none")
    p.add_argument("--models", default=None,
                   help="models as name:width, comma-separated (default cifar_resnet18:1,cifar_resnet18:0.25,"
                        "cifar_mobilenetv2:1)")
    p.add_argument("--convs", default=None, help=f"model conv specs, comma-separated (default {','.join(MODEL_CONVS)})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to benchmark on", device, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            raise SystemExit(f"unknown strategy {s!r}; valid: {', '.join(sorted(STRATEGIES))}")
    if REFERENCE not in strategies:
        strategies.insert(0, REFERENCE)
    os.makedirs(args.out, exist_ok=True)
    info = machine_info(device)
    started = time.perf_counter()

    if args.quick:
        batches = [int(b) for b in (args.batches or "2").split(",")]
        model_batch = args.model_batch or 4
        models, convs = (("cifar_resnet18", 0.125),), ("static", "odconv4x")
        args.max_seconds = min(args.max_seconds, 2.0)
        repeats = 1
    else:
        batches = [int(b) for b in (args.batches or "1,64,128").split(",")]
        model_batch = args.model_batch or 64
        models, convs = MODELS, MODEL_CONVS
        repeats = args.repeats
    if args.models:
        models = tuple((m.split(":")[0], float(m.split(":")[1]) if ":" in m else 1.0) for m in args.models.split(","))
    if args.convs:
        convs = tuple(c for c in args.convs.split(",") if c)
        if "static" not in convs:
            convs = ("static", *convs)

    if not args.skip_layers:
        shapes = layer_shapes(all_shapes=args.all_shapes)
        if args.quick:
            shapes = [shapes[0], next(s for s in shapes if s.groups > 1)]
            shapes = [LayerShape(s.model, s.name, min(s.in_ch, 16), min(s.out_ch, 16), s.k, s.stride, s.padding,
                                 s.dilation, min(s.groups, 16), 8, s.attentions, s.n) for s in shapes]
        print(f"layers: {len(shapes)} shapes x batches {batches} x (fwd, fwd+bwd) x {strategies}", flush=True)
        rows = bench_layers(shapes, batches, strategies, device, repeats, args.max_seconds,
                            log=lambda m: print(m, flush=True))
        write_csv(os.path.join(args.out, "layers.csv"), rows)
        with open(os.path.join(args.out, "layers.md"), "w") as f:
            f.write(layers_markdown(rows, strategies, info, argv))
    if not args.skip_models:
        print(f"models: {models} x {convs}, train batch {model_batch}", flush=True)
        rows = bench_models(models, convs, model_batch, device, repeats, args.max_seconds,
                            reference=args.reference_models, log=lambda m: print(m, flush=True))
        write_csv(os.path.join(args.out, "models.csv"), rows)
        with open(os.path.join(args.out, "models.md"), "w") as f:
            f.write(models_markdown(rows, info, argv))
    print(f"done in {time.perf_counter() - started:.0f} s; results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
