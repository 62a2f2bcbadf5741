"""The ``kw_official`` section: KernelWarehouse ResNet-18 against the official module.

Runs only with ``--kw-official PATH``, a local checkout of github.com/OSVAI/KernelWarehouse
(this project ships none of its code). Per KW spec: :func:`odconv.build_model` ``("resnet18",
num_classes=1000, conv=spec)``, the official ``kw_resnet18`` built with the same config
(:func:`odconv.kw_family.official_settings`) and given our weights (a strict ``load_state_dict``
of :func:`odconv.layers.kernelwarehouse.to_official_state_dict`), and the static ResNet-18, all
timed in the same interleaved rounds (:func:`odconv.bench.measurement.measure_model_costs`):
training step (forward + backward + SGD step) and batch-1 eval latency, as ours / official and
each / static. Before timing, :func:`official_agreement` runs one batch through both at
temperatures 1, 0.3 and 0 in train and eval mode: the largest differences of the outputs, the
input gradients and every parameter's gradient show that the two compute the same function.

The official model file imports two names from ``timm`` (``register_model``, a decorator, and
``DropPath``, used only with ``drop_path > 0``): without timm installed, :func:`official_kw_modules`
lends stand-ins for the import only (checked against the checkout of 2024-2025, commit a4ac17d).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import statistics
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

import odconv

from ..kw_family import official_settings
from ..layers.kernelwarehouse import set_warehouse_temperature, to_official_state_dict
from ..spec import parse_conv_spec
from ..timing import median_ratio
from .measurement import format_samples, measure_model_costs

KW_OFFICIAL_CONVS = ("kw1d4x", "kw1x", "kw4x")
KW_OFFICIAL_FILES = ("modules/kernel_warehouse.py", "models/kw_resnet.py")
#: The temperature both modules run at while timed (the value changes no cost).
KW_OFFICIAL_TEMPERATURE = 0.5
#: The official ``KW_ResNet``'s default dropout before the classifier (its configs keep it).
OFFICIAL_DROPOUT = 0.1
#: The temperatures at which ours and the official module are compared (outputs and gradients).
AGREEMENT_TEMPERATURES = (1.0, 0.3, 0.0)


def check_kw_checkout(path: str) -> Path:
    """``path`` as a checkout of the official KernelWarehouse code; ValueError naming the
    missing file otherwise."""
    root = Path(path)
    missing = [f for f in KW_OFFICIAL_FILES if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{path!r} is not a KernelWarehouse checkout (no {', '.join(missing)}; "
                         "clone github.com/OSVAI/KernelWarehouse)")
    return root


def add_kw_official_arguments(p: argparse.ArgumentParser) -> None:
    """The section's options on the benchmark's command line."""
    g = p.add_argument_group("kw_official")
    g.add_argument("--kw-official", default=None, metavar="PATH",
                   help="a checkout of github.com/OSVAI/KernelWarehouse: runs the kw_official section")
    g.add_argument("--kw-official-convs", default=None,
                   help=f"KW specs of that section (default {','.join(KW_OFFICIAL_CONVS)})")
    g.add_argument("--kw-official-batch", type=int, default=None, help="its training batch (32)")
    g.add_argument("--kw-official-size", type=int, default=None, help="its image size (112)")


def kw_official_convs(p: argparse.ArgumentParser, args: argparse.Namespace, sections: list[str]) -> tuple[str, ...]:
    """The section's specs, checked (a bad option ends in ``p.error``); drops the section from
    the default ``sections`` when no checkout is given."""
    if args.kw_official is None and "kw_official" in sections:
        if args.sections:
            p.error("--sections: kw_official needs --kw-official PATH "
                    "(a checkout of the official KernelWarehouse code)")
        sections.remove("kw_official")
    if args.kw_official is not None:
        try:
            check_kw_checkout(args.kw_official)
        except ValueError as e:
            p.error(f"--kw-official: {e}")
    convs = tuple(c for c in (args.kw_official_convs or ",".join(KW_OFFICIAL_CONVS)).split(",") if c)
    for c in convs:
        try:
            spec = parse_conv_spec(c)
        except ValueError as e:
            p.error(f"--kw-official-convs: {e}")
        if spec.kind != "kw":
            p.error(f"--kw-official-convs: {c!r} is not a KW spec; valid: kw1d4x, kw1d2x, kw1x, kw2x, kw4x")
    if not convs:
        p.error("--kw-official-convs: nothing given")
    return convs


class _DropPathStandIn(nn.Module):
    """Stands in for ``timm``'s DropPath, which the official blocks build only with drop_path > 0."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        raise NotImplementedError("the official model with drop_path > 0 needs timm installed")


def _timm_stand_ins() -> dict[str, types.ModuleType]:
    timm, models, layers, registry = (types.ModuleType(n) for n in
                                      ("timm", "timm.models", "timm.models.layers", "timm.models.registry"))
    layers.DropPath = _DropPathStandIn
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    return {m.__name__: m for m in (timm, models, layers, registry)}


@contextmanager
def _importable(root: Path) -> Iterator[None]:
    """The checkout on ``sys.path`` (its ``modules`` package) and, without timm, the stand-ins."""
    added = {}
    if importlib.util.find_spec("timm") is None:
        added = {k: v for k, v in _timm_stand_ins().items() if k not in sys.modules}
    sys.modules.update(added)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in added:
            sys.modules.pop(name, None)


def official_kw_modules(path: str) -> Callable[..., nn.Module]:
    """The official ``kw_resnet18`` builder from the checkout at ``path`` (its
    ``models/kw_resnet.py``, loaded by file so that ``models/__init__`` and its other
    architectures are not imported)."""
    root = check_kw_checkout(path)
    with _importable(root):
        importlib.import_module("modules.kernel_warehouse")
        spec = importlib.util.spec_from_file_location("kw_official_resnet", root / "models" / "kw_resnet.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.kw_resnet18


def paired_kw_resnet18(spec: str, official_builder: Callable[..., nn.Module]) -> tuple[nn.Module, nn.Module]:
    """Ours and the official KW ResNet-18 of ``spec`` with the same weights (ImageNet layout,
    1000 classes, dropout 0.1 before the classifier as the official default), both at
    :data:`KW_OFFICIAL_TEMPERATURE`."""
    torch.manual_seed(0)
    ours = odconv.build_model("resnet18", num_classes=1000, conv=spec, dropout=OFFICIAL_DROPOUT)
    settings = official_settings(parse_conv_spec(spec), "resnet")
    settings.pop("spatial_partition")            # the official builder takes the manager's default (True)
    official = official_builder(**settings)
    official.load_state_dict(to_official_state_dict(ours.state_dict()), strict=True)
    set_warehouse_temperature(ours, KW_OFFICIAL_TEMPERATURE)
    official.net_update_temperature(KW_OFFICIAL_TEMPERATURE)
    return ours, official


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> tuple:
    """Output, input gradient and parameter gradients (by name; None as 0) of ``sum(model(x) * weight)``."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(0)                 # the same dropout mask in both modules
    out = model(x)
    (out * weight).sum().backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


def official_agreement(spec: str, ours: nn.Module, official: nn.Module, x: torch.Tensor,
                       temperatures: Sequence[float] = AGREEMENT_TEMPERATURES) -> list[dict]:
    """Per temperature and mode (train, eval): the largest difference between ours and the
    official module in the output, the input gradient and any parameter's gradient (parameters
    matched by name) for the loss ``sum(output * w)``, w fixed, computed on float64 copies of
    both (the modules themselves are left as they are)."""
    rows = []
    # float64 copies: what is left of a difference is the two modules', not float32 rounding
    # amplified by BatchNorm's backward on a batch of 2
    ours, official, x = copy.deepcopy(ours).double(), copy.deepcopy(official).double(), x.double()
    for t in temperatures:
        set_warehouse_temperature(ours, t)
        official.net_update_temperature(t)
        for mode in ("train", "eval"):
            ours.train(mode == "train")
            official.train(mode == "train")
            weight = torch.randn(x.shape[0], 1000, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
            weight = weight.to(x.device)
            (y0, gx0, gp0), (y1, gx1, gp1) = (_outputs_and_grads(m, x, weight) for m in (ours, official))
            if gp0.keys() != gp1.keys():
                raise RuntimeError(f"{spec}: parameter names differ from the official module's: "
                                   f"{sorted(gp0.keys() ^ gp1.keys())[:5]}")
            rows.append(dict(conv=spec, temperature=t, mode=mode,
                             max_output_diff=(y0 - y1).abs().max().item(), max_output=y1.abs().max().item(),
                             max_input_grad_diff=(gx0 - gx1).abs().max().item(),
                             max_param_grad_diff=max((gp0[n] - gp1[n]).abs().max().item() for n in gp0),
                             max_param_grad=max(g.abs().max().item() for g in gp1.values())))
    return rows


def ratio_quartiles(samples: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles of the per-round ratios ``samples[i] / base[i]``."""
    ratios = [a / b for a, b in zip(samples, base)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, q3


def bench_kw_official(path: str, convs: Sequence[str] = KW_OFFICIAL_CONVS, *, batch: int, image_size: int,
                      device: torch.device, train_rounds: int, latency_rounds: int,
                      log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Per spec in ``convs``: timing rows for ours, the official module and static ResNet-18
    (inputs (batch, 3, image_size, image_size)), with ``vs_official`` (ours / official, per-round
    median ratio) and ``vs_static`` (each / static); and the :func:`official_agreement` rows
    (a batch of 2). Returns (timing rows, agreement rows)."""
    builder = official_kw_modules(path)
    torch.manual_seed(0)
    static = odconv.build_model("resnet18", num_classes=1000, conv="static", dropout=OFFICIAL_DROPOUT).to(device)
    rows: list[dict] = []
    agreement: list[dict] = []
    x_check = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    for spec in convs:
        ours, official = (m.to(device) for m in paired_kw_resnet18(spec, builder))
        checks = official_agreement(spec, ours, official, x_check)
        agreement += checks
        diff = max(r["max_output_diff"] for r in checks)
        log(f"  kw_official {spec:7s} against the official module: outputs {diff:.1e}, input gradients "
            f"{max(r['max_input_grad_diff'] for r in checks):.1e}, parameter gradients "
            f"{max(r['max_param_grad_diff'] for r in checks):.1e} (largest differences)")
        costs = measure_model_costs({"static": static, "ours": ours, "official": official}, device, batch=batch,
                                    input_size=(3, image_size, image_size), num_classes=1000,
                                    train_rounds=train_rounds, latency_rounds=latency_rounds, macs=False)
        for name, c in costs.items():
            base = costs["official"]
            rows.append(dict(
                conv=spec, module=name, batch=batch, image_size=image_size, params_m=round(c.params / 1e6, 3),
                max_output_diff=diff if name != "static" else float("nan"),
                train_step_ms=round(c.train_step_s * 1e3, 2),
                train_vs_official=round(median_ratio(c.train_samples, base.train_samples), 3),
                train_vs_official_q1=round(ratio_quartiles(c.train_samples, base.train_samples)[0], 3),
                train_vs_official_q3=round(ratio_quartiles(c.train_samples, base.train_samples)[1], 3),
                train_vs_static=round(median_ratio(c.train_samples, costs["static"].train_samples), 3),
                latency_b1_ms=round(c.latency_s(1) * 1e3, 3),
                latency_vs_official=round(median_ratio(c.latency_samples[1], base.latency_samples[1]), 3),
                latency_vs_static=round(median_ratio(c.latency_samples[1], costs["static"].latency_samples[1]), 3),
                train_peak_mb=round(c.peak_memory_bytes / 2 ** 20, 1),
                mem_vs_official=round(c.peak_memory_bytes / max(base.peak_memory_bytes, 1), 3),
                train_samples_ms=format_samples(c.train_samples),
                latency_samples_ms=format_samples(c.latency_samples[1])))
            log(f"  kw_official {spec:7s} {name:8s} train {rows[-1]['train_step_ms']:9.1f} ms "
                f"(x{rows[-1]['train_vs_official']:.3f} official, x{rows[-1]['train_vs_static']:.2f} static)  "
                f"latency {rows[-1]['latency_b1_ms']:8.2f} ms (x{rows[-1]['latency_vs_official']:.3f} official)")
        del ours, official, costs
    return rows, agreement
