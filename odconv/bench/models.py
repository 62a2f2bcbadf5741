"""The models, strategies and floors sections of the benchmark: whole models against static.

Per (model, width): every conv's training step, batch-1 latency and training peak memory,
measured by :func:`odconv.bench.measurement.measure_model_costs` in interleaved rounds with the
static model of the same width, as ratios to it (medians of per-round ratios).
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

import odconv

from ..timing import median_ratio
from .measurement import ModelCosts, format_samples, measure_model_costs, model_inputs

MODEL_CONVS = ("static", "odconv1x", "odconv4x", "dyconv4x", "condconv8x", "kw1d4x", "kw1x", "kw4x")
MODELS = (("cifar_resnet18", 0.125), ("cifar_resnet18", 0.5), ("cifar_resnet18", 1.0))
PRECISIONS = ("fp32", "bf16")  # bf16: autocast, fp32 weights and optimizer (Lightning's bf16-mixed)
# The strategies section: the models and convs it runs by default, and the strategies it compares.
STRATEGY_MODELS = (("cifar_resnet18", 0.125), ("cifar_resnet18", 0.5))
STRATEGY_CONVS = ("static", "odconv1x", "odconv4x", "condconv8x")
MODEL_STRATEGIES = ("auto", "fused")
# The floors section: the models of the strategies section, the convs with an attention branch.
FLOOR_CONVS = ("static", "odconv1x", "odconv4x", "dyconv4x")
STATIC_KEY = "static|-|computed"  # the entry every model row is compared with


def model_rows(costs: Mapping[str, ModelCosts], model_name: str, width: float, precision: str) -> list[dict]:
    """One row per entry of ``costs`` (keyed ``conv|strategy|attention``, one of them
    :data:`STATIC_KEY`, each with batch-1 latency): its figures (medians) and its ratios to the
    static entry: time ratios are medians of the per-round ratios, memory the plain ratio."""
    base = costs[STATIC_KEY]
    rows = []
    for key, c in costs.items():
        conv, strategy, attention = key.split("|")
        rows.append(dict(
            model=model_name, width=width, precision=precision, conv=conv, strategy=strategy,
            attention=attention, batch=c.batch,
            params_m=round(c.params / 1e6, 3),
            train_step_ms=round(c.train_step_s * 1e3, 3),
            latency_b1_ms=round(c.latency_s(1) * 1e3, 4),
            train_peak_mb=round(c.peak_memory_bytes / 2 ** 20, 2),
            train_vs_static=round(median_ratio(c.train_samples, base.train_samples), 3),
            latency_vs_static=round(median_ratio(c.latency_samples[1], base.latency_samples[1]), 3),
            mem_vs_static=round(c.peak_memory_bytes / max(base.peak_memory_bytes, 1), 3),
            train_samples_ms=format_samples(c.train_samples), latency_samples_ms=format_samples(c.latency_samples[1])))
    return rows


def bench_models(models: Sequence[tuple[str, float]], convs: Sequence[str], batch: int, device: torch.device,
                 precision: str, train_rounds: int, latency_rounds: int, strategies: Sequence[str] = ("auto",),
                 log: Callable[[str], None] = print, constant_attention: bool = False,
                 num_classes: int = 10) -> list[dict]:
    """Per (model, width): every conv's training step (forward + backward + SGD step at
    ``batch``, inputs (batch, 3, 32, 32)), batch-1 eval latency and training peak memory under
    ``precision`` (``fp32``, or ``bf16`` autocast): :func:`model_rows` of
    :func:`odconv.bench.measurement.measure_model_costs`. ``convs`` must include ``static``.
    Every dynamic model runs once per name in ``strategies`` (``auto``: the default choice)
    and, with ``constant_attention``, once more per strategy with its attention branches
    replaced by constants (:func:`freeze_attentions`), all interleaved in the same rounds.
    Each row's ``attention`` says which: ``computed`` or ``constant``."""
    rows: list[dict] = []
    for model_name, width in models:
        entries = [(conv, s, a) for conv in convs for s in (("-",) if conv == "static" else strategies)
                   for a in (("computed", "constant") if constant_attention and conv != "static" else ("computed",))]
        nets: dict[str, nn.Module] = {}
        eval_nets: dict[str, nn.Module] = {}
        for conv, strategy, attention in entries:
            torch.manual_seed(0)  # the same initial weights for every strategy of a conv
            model = odconv.build_model(model_name, num_classes=num_classes, conv=conv, width=width).to(device)
            if conv != "static":
                odconv.set_strategy(model, strategy)
            key = f"{conv}|{strategy}|{attention}"
            nets[key] = model
            if attention == "constant":
                # frozen on the inputs the measurement feeds: batch-1 latency and the training batch
                eval_nets[key] = copy.deepcopy(model).eval()
                freeze_attentions(eval_nets[key], model_inputs(1, device=device)[0])
                freeze_attentions(model.train(), model_inputs(batch, num_classes=num_classes, device=device)[0])
        costs = measure_model_costs(nets, device, batch=batch, num_classes=num_classes, precision=precision,
                                    train_rounds=train_rounds, latency_batches=(1,), latency_rounds=latency_rounds,
                                    macs=False, eval_models=eval_nets)
        for r in model_rows(costs, model_name, width, precision):
            rows.append(r)
            log(f"  {model_name} w{width} {precision} {r['conv']:10s} {r['strategy']:8s} {r['attention']:8s} "
                f"train {r['train_step_ms']:9.1f} ms "
                f"({r['train_vs_static']:.2f}x)  latency {r['latency_b1_ms']:7.2f} ms ({r['latency_vs_static']:.2f}x)  "
                f"mem {r['train_peak_mb']:8.1f} MB ({r['mem_vs_static']:.2f}x)")
        del nets, eval_nets, costs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


class ConstantAttention(nn.Module):
    """Stands in for a dynamic layer's attention branch: returns the attentions recorded from
    one forward pass (leaf tensors that take gradients), so the layer's conv and its backward
    do the same work as with the branch, and the branch's own work is gone."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor):
        return self.value


def freeze_attentions(model: nn.Module, x: torch.Tensor) -> int:
    """Replace the attention branch (``layer.attention``: ODConv, DyConv) of every dynamic layer
    of ``model`` by a :class:`ConstantAttention` holding what it computed for ``x`` (B, 3, H, W)
    in the model's current mode; the model then only runs on inputs of ``x``'s batch size.
    Returns how many branches it replaced (CondConv's routers are left as they are)."""
    layers = [m for m in model.modules()
              if isinstance(m, odconv.DynamicConvBase) and isinstance(getattr(m, "attention", None), nn.Module)]
    recorded: dict[nn.Module, object] = {}
    hooks = [m.attention.register_forward_hook(lambda mod, inp, out, m=m: recorded.__setitem__(m, out))
             for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m in layers:
        out = recorded[m]
        leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
        m.attention = ConstantAttention({k: leaf(v) for k, v in out.items()} if isinstance(out, dict) else leaf(out))
    return len(layers)

