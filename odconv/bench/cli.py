"""Benchmark of dynamic convolution against static convolution (``make bench``).

    python -m odconv.bench [--quick] [--device cpu|cuda] [--out results/bench] [--sections ...]

Sections (``--sections``, default all that apply to the device), each writing ``NAME.csv``
and ``NAME.md`` under ``--out``:

* ``layers``: the dynamic-conv shapes of CIFAR ResNet-18 and CIFAR MobileNetV2 (as ODConv-4x
  places them), forward (no grad) and forward+backward: time and peak memory of the static
  conv, of every strategy and of the ``auto`` choice, as ratios to the static conv, to the
  reference strategy (``grouped``) and to the fastest strategy of the same row. A recheck
  pass re-times, with more rounds, any row where ``auto`` looks slower than the reference
  or than the fastest strategy beyond the tolerances; the table marks those rows.
* ``models``: ``cifar_resnet18`` at widths 0.125, 0.5 and 1 with static, odconv1x, odconv4x,
  dyconv4x, condconv8x, kw1d4x, kw1x and kw4x convs: training step time (batch 128), batch-1 inference latency
  and training peak memory, as ratios to the static model of the same run, in fp32 and under
  bf16 autocast (``bf16-mixed``; the static model in bf16 is then the reference).
* ``strategies``: the same model measurement for ODConv-1x, ODConv-4x and CondConv-8x at widths
  0.125 and 0.5 under several strategies (default ``auto`` and ``fused``): what each execution strategy
  costs in time and peak memory against the static model, i.e. the memory floor (``fused``
  saves only each layer's inputs) and its price in time.
* ``floors``: the models of the strategies section (static, ODConv-1x, ODConv-4x, DyConv-4x),
  each dynamic model also with its attention branches replaced by the constants they computed
  (:func:`odconv.bench.models.freeze_attentions`): how much of its training step and batch-1 latency over static
  is the attention branch, and what is left for the dynamic conv itself.
* ``kw_official`` (only with ``--kw-official PATH``, a local checkout of the official
  KernelWarehouse code): KW ResNet-18 (kw1d4x, kw1x, kw4x) built by this project and by the
  official code with the same weights, training step and latency against each other and
  against static ResNet-18 (:mod:`odconv.bench.kw_official`).
* ``workers`` (CPU only): training throughput of the sweeps' small CPU model with P worker
  processes of one thread each against one process of P threads (P = the CPU cores).

``targets.md|csv`` then states every target of the project (model time, memory and latency
ratios, the default strategy against the reference and the fastest strategy), what this run
measured and whether it is met. Timings are medians of interleaved rounds
(:func:`odconv.timing.time_rounds`); compare ratios within one run only. Module layout: see
:mod:`odconv.bench`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

import odconv

from ..spec import parse_conv_spec
from .kw_official import KW_OFFICIAL_TEMPERATURE, add_kw_official_arguments, bench_kw_official, kw_official_convs
from .layers import (
    NOT_TIMED_BY_DEFAULT,
    REFERENCE,
    LayerShape,
    bench_layers,
    default_strategies,
    layer_callables,
    layer_shapes,
    recheck_layers,
)
from .measurement import machine_info
from .models import (
    FLOOR_CONVS,
    MODEL_CONVS,
    MODEL_STRATEGIES,
    MODELS,
    PRECISIONS,
    STRATEGY_CONVS,
    STRATEGY_MODELS,
    bench_models,
)
from .report import (
    BEST_TOLERANCE,
    REFERENCE_TOLERANCE,
    evaluate_targets,
    floors_markdown,
    kw_official_markdown,
    layers_markdown,
    memory_floor_summary,
    models_markdown,
    strategies_markdown,
    targets_markdown,
    workers_advice,
    workers_markdown,
    write_csv,
)
from .workers import bench_workers

SECTIONS = ("layers", "models", "strategies", "floors", "kw_official", "workers")


def _parse_list(p: argparse.ArgumentParser, option: str, text: str, valid: Sequence[str]) -> list[str]:
    items = [s for s in text.split(",") if s]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        p.error(f"{option}: {', '.join(map(repr, bad)) or 'nothing given'}; valid: {', '.join(valid)}")
    return items


def _parse_models(p: argparse.ArgumentParser, text: str) -> tuple[tuple[str, float], ...]:
    known = odconv.list_models()
    out = []
    for item in (s for s in text.split(",") if s):
        name, _, width = item.partition(":")
        if name not in known:
            p.error(f"--models: unknown model {name!r}; valid: {', '.join(sorted(known))}")
        try:
            out.append((name, float(width) if width else 1.0))
        except ValueError:
            p.error(f"--models: width {width!r} of {name} is not a number (name:width, e.g. cifar_resnet18:0.5)")
    return tuple(out)


def _parse_convs(p: argparse.ArgumentParser, option: str, text: str, add_static: bool = True) -> tuple[str, ...]:
    """Comma-separated conv specs, each checked by :func:`odconv.spec.parse_conv_spec`;
    ``static`` first unless there or ``add_static`` is False."""
    convs = tuple(c for c in text.split(",") if c)
    if not convs:
        p.error(f"{option}: nothing given")
    for c in convs:
        try:
            parse_conv_spec(c)
        except ValueError as e:
            p.error(f"{option}: {e}")
    return convs if "static" in convs or not add_static else ("static", *convs)


def _int_list(p: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",") if b]
    except ValueError:
        p.error(f"{option}: {text!r} is not a comma-separated list of positive integers")
    if not values or min(values) < 1:
        p.error(f"{option}: {text!r} is not a comma-separated list of positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m odconv.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: two tiny layer shapes, the smallest model at batch 8, 1 s workers")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", default="results/bench", help="output directory")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all; workers on CPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    g = p.add_argument_group("layers")
    g.add_argument("--batches", default=None, help="layer batch sizes, comma-separated (default 1,64)")
    g.add_argument("--strategies", default=None,
                   help="strategies to time, comma-separated (the reference is always timed; default: every "
                        f"registered one except {', '.join(NOT_TIMED_BY_DEFAULT)})")
    g.add_argument("--all-shapes", action="store_true",
                   help="every distinct layer shape (36) instead of one per kind, resolution and stride (22)")
    g.add_argument("--repeats", type=int, default=5, help="timed rounds per layer row and for latency (x2)")
    g.add_argument("--keep-within", type=float, default=2.0,
                   help="after the first round, time further only strategies within this multiple of the fastest")
    g.add_argument("--recheck-repeats", type=int, default=15, help="rounds of the recheck pass")
    g.add_argument("--tolerance", type=float, default=REFERENCE_TOLERANCE,
                   help="auto may exceed the reference by this fraction before a row is rechecked / not met")
    g = p.add_argument_group("models")
    g.add_argument("--models", default=None,
                   help="models as name:width, comma-separated (default "
                        + ",".join(f"{m}:{w:g}" for m, w in MODELS) + ")")
    g.add_argument("--convs", default=None, help=f"model conv specs, comma-separated (default {','.join(MODEL_CONVS)}; "
                                                 "static is always added)")
    g.add_argument("--model-batch", type=int, default=None, help="training batch of the model benchmark (128)")
    g.add_argument("--precisions", default=None, help=f"of {', '.join(PRECISIONS)} (default both)")
    g.add_argument("--train-repeats", type=int, default=3, help="timed rounds of the training steps")
    g.add_argument("--reference-models", action="store_true",
                   help="also time each dynamic model with the reference strategy (slow at width 1)")
    g = p.add_argument_group("strategies")
    g.add_argument("--strategy-models", default=None,
                   help="model:width pairs of the strategies section (default "
                        f"{','.join(f'{m}:{w:g}' for m, w in STRATEGY_MODELS)})")
    g.add_argument("--strategy-convs", default=None,
                   help=f"convs of the strategies section (default {','.join(STRATEGY_CONVS)}; static is always added)")
    g.add_argument("--model-strategies", default=None,
                   help=f"strategies each dynamic model runs under there (default {','.join(MODEL_STRATEGIES)})")
    g = p.add_argument_group("floors")
    g.add_argument("--floor-convs", default=None,
                   help=f"convs of the floors section (default {','.join(FLOOR_CONVS)}; static is always added; its "
                        "models are the strategies section's)")
    add_kw_official_arguments(p)
    g = p.add_argument_group("workers")
    g.add_argument("--workers-model", default="cifar_resnet18:0.125", help="model:width of the layout measurement")
    g.add_argument("--workers-convs", default=None, help="convs of the layout measurement (default static,odconv4x)")
    g.add_argument("--workers-batch", type=int, default=None, help="training batch (128)")
    g.add_argument("--workers-seconds", type=float, default=None, help="length of each timed window (6)")
    g.add_argument("--workers-repeats", type=int, default=None, help="repeats of each layout (2)")
    return p


@dataclass
class BenchPlan:
    """What one benchmark run measures: the command line, checked and with its defaults
    (``--quick`` or full) filled in."""

    argv: list[str]
    out: str
    device: torch.device
    sections: list[str]
    quick: bool
    # layers
    batches: list[int]
    strategies: list[str]
    all_shapes: bool
    keep_within: float
    tolerance: float
    rounds: int
    recheck_rounds: int
    # models, strategies, floors
    precisions: list[str]
    models: tuple[tuple[str, float], ...]
    convs: tuple[str, ...]
    model_batch: int
    train_rounds: int
    reference_models: bool
    s_models: tuple[tuple[str, float], ...]
    s_convs: tuple[str, ...]
    model_strategies: list[str]
    f_convs: tuple[str, ...]
    # kw_official
    kw_path: Optional[str]
    kw_convs: tuple[str, ...]
    kw_batch: int
    kw_size: int
    # workers
    w_model: tuple[str, float]
    w_convs: list[str]
    w_batch: int
    w_seconds: float
    w_repeats: int

    @property
    def latency_rounds(self) -> int:
        return 2 * self.rounds


def _check_device(p: argparse.ArgumentParser, text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        p.error(f"--device: {text!r} is not a device; valid: cpu, cuda, cuda:N")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device: {text!r}; valid: cpu, cuda, cuda:N")
    return device


def _sizes(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The batch sizes, model lists and round counts: ``--quick``'s small defaults or the full ones."""
    if args.quick:
        return dict(
            batches=_int_list(p, "--batches", args.batches or "2"),
            model_batch=args.model_batch or 8,
            models=_parse_models(p, args.models) if args.models else (("cifar_resnet18", 0.125),),
            s_models=_parse_models(p, args.strategy_models) if args.strategy_models else (("cifar_resnet18", 0.125),),
            rounds=2, train_rounds=2, recheck_rounds=3,
            kw_batch=args.kw_official_batch or 2, kw_size=args.kw_official_size or 32,
            w_batch=args.workers_batch or 8, w_seconds=args.workers_seconds or 1.0,
            w_repeats=args.workers_repeats or 1)
    return dict(
        batches=_int_list(p, "--batches", args.batches or "1,64"),
        model_batch=args.model_batch or 128,
        models=_parse_models(p, args.models) if args.models else MODELS,
        s_models=_parse_models(p, args.strategy_models) if args.strategy_models else STRATEGY_MODELS,
        rounds=args.repeats, train_rounds=args.train_repeats, recheck_rounds=args.recheck_repeats,
        kw_batch=args.kw_official_batch or 32, kw_size=args.kw_official_size or 112,
        w_batch=args.workers_batch or 128, w_seconds=args.workers_seconds or 6.0,
        w_repeats=args.workers_repeats or 2)


def make_plan(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str], device: torch.device) -> BenchPlan:
    """Check every option (a bad one ends in ``p.error``: exit code 2) and fill in the defaults."""
    for option in ("repeats", "recheck_repeats", "train_repeats"):
        if getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')}: must be >= 1, got {getattr(args, option)}")
    sections = _parse_list(p, "--sections", args.sections or ",".join(SECTIONS), SECTIONS)
    if device.type != "cpu" and "workers" in sections:
        if args.sections:
            p.error("--sections: workers measures CPU worker processes; it runs with --device cpu only")
        sections.remove("workers")
    kw_convs = kw_official_convs(p, args, sections)
    strategies = _parse_list(p, "--strategies", args.strategies or ",".join(default_strategies()),
                             sorted(odconv.STRATEGIES))
    if REFERENCE not in strategies:
        strategies.insert(0, REFERENCE)
    precisions = _parse_list(p, "--precisions", args.precisions or ",".join(PRECISIONS), list(PRECISIONS))
    convs = _parse_convs(p, "--convs", args.convs or ",".join(MODEL_CONVS))
    w_model = _parse_models(p, args.workers_model)
    if len(w_model) != 1:
        p.error(f"--workers-model: one model:width, got {args.workers_model!r}")
    model_strategies = _parse_list(p, "--model-strategies", args.model_strategies or ",".join(MODEL_STRATEGIES),
                                   ["auto", *sorted(odconv.STRATEGIES)])
    s_convs = _parse_convs(p, "--strategy-convs", args.strategy_convs or ",".join(STRATEGY_CONVS))
    f_convs = _parse_convs(p, "--floor-convs", args.floor_convs or ",".join(FLOOR_CONVS))
    w_default = "static" if args.quick else "static,odconv4x"
    w_convs = list(_parse_convs(p, "--workers-convs", args.workers_convs or w_default, add_static=False))
    if args.quick:  # the quick run's convs, unless given
        convs = convs if args.convs else ("static", "odconv4x")
        s_convs = s_convs if args.strategy_convs else ("static", "odconv4x")
        f_convs = f_convs if args.floor_convs else ("static", "odconv4x")
    return BenchPlan(
        argv=argv, out=args.out, device=device, sections=sections, quick=args.quick, strategies=strategies,
        all_shapes=args.all_shapes, keep_within=args.keep_within, tolerance=args.tolerance, precisions=precisions,
        convs=convs, reference_models=args.reference_models, s_convs=s_convs, model_strategies=model_strategies,
        f_convs=f_convs, kw_path=args.kw_official, kw_convs=kw_convs, w_model=w_model[0], w_convs=w_convs,
        **_sizes(p, args))


def _write(out: str, name: str, rows: list[dict], markdown: str) -> None:
    """A section's ``NAME.csv`` (its rows) and ``NAME.md`` (its table) under ``out``."""
    write_csv(os.path.join(out, f"{name}.csv"), rows)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(markdown)


def run_layers(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> list[dict]:
    """The ``layers`` section: every layer shape timed, suspicious rows rechecked; its rows."""
    shapes = layer_shapes(all_shapes=plan.all_shapes)
    if plan.quick:
        shapes = [shapes[0], next(s for s in shapes if s.groups > 1)]
        shapes = [LayerShape(s.model, s.name, min(s.in_ch, 16), min(s.out_ch, 16), s.k, s.stride, s.padding,
                             s.dilation, min(s.groups, 16), 8, s.attentions, s.n) for s in shapes]
    say(f"layers: {len(shapes)} shapes x batches {plan.batches} x (fwd, fwd+bwd) x {plan.strategies}")
    rows = bench_layers(shapes, plan.batches, plan.strategies, plan.device, plan.rounds, plan.keep_within, log=say)
    by_key = {(s.model, s.name): s for s in shapes}

    def make_fns(row, names):
        s = by_key[(row["model"], row["layer"])]
        return layer_callables(s, int(row["batch"]), plan.device, row["mode"] == "fwd+bwd", names)[0]

    n = recheck_layers(rows, make_fns, plan.device, plan.recheck_rounds, plan.tolerance, BEST_TOLERANCE, log=say)
    say(f"layers: {n} row(s) rechecked")
    _write(plan.out, "layers", rows, layers_markdown(rows, plan.strategies, info, plan.argv, plan.rounds,
                                                      plan.keep_within, plan.tolerance, BEST_TOLERANCE,
                                                      plan.recheck_rounds))
    return rows


def run_models(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> list[dict]:
    """The ``models`` section, in every precision; its rows."""
    rows: list[dict] = []
    for precision in plan.precisions:
        say(f"models ({precision}): {plan.models} x {plan.convs}, train batch {plan.model_batch}")
        rows += bench_models(plan.models, plan.convs, plan.model_batch, plan.device, precision, plan.train_rounds,
                             plan.latency_rounds, ("auto", REFERENCE) if plan.reference_models else ("auto",),
                             log=say)
    _write(plan.out, "models", rows, models_markdown(rows, info, plan.argv, plan.train_rounds, plan.latency_rounds))
    return rows


def run_strategies(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> None:
    """The ``strategies`` section: each dynamic model under each strategy, in every precision."""
    rows: list[dict] = []
    for precision in plan.precisions:
        say(f"strategies ({precision}): {plan.s_models} x {plan.s_convs} x {plan.model_strategies}, "
            f"train batch {plan.model_batch}")
        rows += bench_models(plan.s_models, plan.s_convs, plan.model_batch, plan.device, precision,
                             plan.train_rounds, plan.latency_rounds, plan.model_strategies, log=say)
    _write(plan.out, "strategies", rows, strategies_markdown(rows, info, plan.argv, plan.train_rounds))
    say("strategies: " + memory_floor_summary(rows).replace("\n", "\n  "))


def run_floors(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> None:
    """The ``floors`` section: the strategies section's models with attention computed and constant."""
    rows: list[dict] = []
    for precision in plan.precisions:
        say(f"floors ({precision}): {plan.s_models} x {plan.f_convs}, attention computed and constant, train batch "
            f"{plan.model_batch}")
        rows += bench_models(plan.s_models, plan.f_convs, plan.model_batch, plan.device, precision,
                             plan.train_rounds, plan.latency_rounds, log=say, constant_attention=True)
    _write(plan.out, "floors", rows, floors_markdown(rows, info, plan.argv, plan.train_rounds, plan.latency_rounds))


def run_kw_official(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> None:
    """The ``kw_official`` section: KW ResNet-18, ours against the official module and static."""
    say(f"kw_official: {plan.kw_convs} from {plan.kw_path}, train batch {plan.kw_batch}, image {plan.kw_size}")
    rows, agreement = bench_kw_official(plan.kw_path, plan.kw_convs, batch=plan.kw_batch, image_size=plan.kw_size,
                                        device=plan.device, train_rounds=plan.train_rounds,
                                        latency_rounds=plan.latency_rounds, log=say)
    write_csv(os.path.join(plan.out, "kw_official_agreement.csv"), agreement)
    _write(plan.out, "kw_official", rows, kw_official_markdown(rows, agreement, info, plan.argv, plan.train_rounds,
                                                                plan.latency_rounds, KW_OFFICIAL_TEMPERATURE))


def run_workers(plan: BenchPlan, info: dict, say: Callable[[str], None]) -> None:
    """The ``workers`` section: P one-thread processes against one P-thread process (P = cores)."""
    cores = os.cpu_count() or 1
    if cores < 2:
        say("workers: one CPU core: no layout to compare")
        return
    say(f"workers: {cores} processes x 1 thread against 1 process x {cores} threads, {plan.w_model}, "
        f"{plan.w_convs}")
    rows = bench_workers(cores, plan.w_model[0], plan.w_model[1], plan.w_convs, plan.w_batch, plan.w_seconds,
                         plan.w_repeats, log=say)
    _write(plan.out, "workers", rows, workers_markdown(rows, info, plan.argv, plan.w_seconds, plan.w_repeats))
    say("workers: " + workers_advice(rows))


def run_targets(plan: BenchPlan, info: dict, say: Callable[[str], None], model_rows: list[dict],
                layer_rows: list[dict]) -> None:
    """``targets.md|csv``: every target of the project against what this run measured."""
    targets = evaluate_targets(model_rows, layer_rows, plan.tolerance, BEST_TOLERANCE)
    _write(plan.out, "targets", targets, targets_markdown(targets, info, plan.argv))
    say(f"targets: {sum(t['met'] for t in targets)} of {len(targets)} met")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    device = _check_device(p, args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: CUDA is not available to torch {torch.__version__}: nothing to benchmark on {device}",
              file=sys.stderr)
        return 2
    plan = make_plan(p, args, argv, device)
    if args.threads:
        torch.set_num_threads(args.threads)

    os.makedirs(plan.out, exist_ok=True)
    info = machine_info(device)
    started = time.perf_counter()
    say = lambda m: print(m, flush=True)  # noqa: E731
    layer_rows = run_layers(plan, info, say) if "layers" in plan.sections else []
    model_rows = run_models(plan, info, say) if "models" in plan.sections else []
    if "strategies" in plan.sections:
        run_strategies(plan, info, say)
    if "floors" in plan.sections:
        run_floors(plan, info, say)
    if "kw_official" in plan.sections:
        run_kw_official(plan, info, say)
    if "workers" in plan.sections:
        run_workers(plan, info, say)
    if layer_rows or model_rows:
        run_targets(plan, info, say, model_rows, layer_rows)
    say(f"done in {time.perf_counter() - started:.0f} s; results in {plan.out}")
    return 0
