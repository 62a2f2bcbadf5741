"""Cost counting: parameters and multiply-accumulates (MACs) per image. Counts only: nothing
here times or profiles a model (times and memory: :mod:`odconv.timing`,
:func:`odconv.bench.measurement.measure_model_costs`).

Definition (see docs/models.md, "Cost counting"). ``count_macs`` runs one forward pass on a single
image of ``input_size`` and adds up:

- for every **static** part of the model, the MACs that
  :class:`torch.utils.flop_counter.FlopCounterMode` counts, halved (it counts a
  multiply-add as 2 FLOPs): convolutions and matrix products (``nn.Linear``...). As in the
  usual published figures (ResNet-18 1.814 G, MobileNetV2 1.0 300.8 M at 224x224),
  BatchNorm, activations, pooling, residual additions and other elementwise ops count 0;
- for every **dynamic layer** (an :class:`odconv.layers.DynamicConvBase`, a layer of a
  registered conv family whose :meth:`odconv.families.ConvFamily.mac_breakdown` counts it, or
  a module with a ``mac_breakdown(in_hw)`` method such as the shared CondConv router), its analytic
  count for the input size it actually received, instead of what its implementation
  happens to execute: ``conv`` (the convolution with the example's kernel, same as a static
  conv), ``aggregation`` (building the example's kernel: ``n * kernel size`` for n kernels
  and/or spatial attention), ``attention`` (global average pooling of the input, one MAC per
  input element, plus the attention branch's FC layers) and ``modulation`` (multiplying
  channel attention into the input and filter attention into the output). The count is
  therefore the same whatever execution ``strategy`` the layer uses. A family's layer that
  nothing counts analytically is counted generically, as a static part.

Everything is per image (batch size 1); for a batch of B multiply by B.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .families import family_of_layer
from .layers import DynamicConvBase

PARTS = ("conv", "aggregation", "attention", "modulation")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _is_analytic(m: nn.Module) -> bool:
    family = family_of_layer(m)
    if family is not None and family.counts_macs(m):
        return True
    return isinstance(m, DynamicConvBase) or callable(getattr(m, "mac_breakdown", None))


def _mac_breakdown(m: nn.Module, in_hw: tuple[int, int]) -> dict[str, int]:
    """The analytic count of ``m``: its family's, else its own ``mac_breakdown``."""
    family = family_of_layer(m)
    if family is not None and family.counts_macs(m):
        return family.mac_breakdown(m, in_hw) or {}
    return m.mac_breakdown(in_hw)


def _analytic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost modules counted analytically (a dynamic layer's own sub-modules are not)."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, m: nn.Module) -> None:
        if _is_analytic(m):
            found.append((prefix or type(m).__name__, m))
            return
        for name, child in m.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def _check_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(int(s) for s in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)!r}")
    return size


def _measure(model: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
    size = _check_input_size(input_size)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((1, *size), device=device, dtype=dtype)
    layers: dict[str, dict[str, Any]] = {}
    state = {"excluded": 0}
    counter = FlopCounterMode(display=False)
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args, kwargs):
            inp = args[0] if args else next(iter(kwargs.values()))
            module.__dict__.setdefault("_counting_stack", []).append((counter.get_total_flops(), tuple(inp.shape[-2:])))
        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args, output):
            start, in_hw = module.__dict__["_counting_stack"].pop()
            state["excluded"] += counter.get_total_flops() - start
            parts = _mac_breakdown(module, in_hw)
            entry = layers.setdefault(name, {"type": type(module).__name__, "in_hw": in_hw, "calls": 0,
                                             **{p: 0 for p in PARTS}})
            entry["calls"] += 1
            for p in PARTS:
                entry[p] += int(parts.get(p, 0))
        return hook

    for name, m in _analytic_modules(model):
        handles.append(m.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
        handles.append(m.register_forward_hook(post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for _, m in _analytic_modules(model):
            m.__dict__.pop("_counting_stack", None)
    total_flops = counter.get_total_flops()
    static = (total_flops - state["excluded"]) // 2
    breakdown = {"static": static, **{p: sum(e[p] for e in layers.values()) for p in PARTS}}
    for e in layers.values():
        e["macs"] = sum(e[p] for p in PARTS)
    return {"macs": sum(breakdown.values()), "macs_breakdown": breakdown, "layers": layers}


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates for one image of ``input_size`` (C, H, W); see the module doc
    for what is counted. The model runs once in eval mode under ``torch.no_grad`` (its mode is
    restored), on the device and dtype of its parameters. A model built on the ``meta``
    device (``with torch.device("meta"): build_model(...)``) is counted the same, without
    allocating weights."""
    return _measure(model, input_size)["macs"]


def _classifier(model: nn.Module) -> Optional[nn.Module]:
    get = getattr(model, "get_classifier", None)
    return get() if callable(get) else None


def profile_model(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> dict[str, Any]:
    """The counted costs of ``model`` for one image of ``input_size``: its parameters (split
    into backbone and classifier) and its MACs (split by part and by dynamic layer). A count,
    not a timing: the name is historical; nothing is timed or profiled.

    Returns a dict:

    - ``params``: all parameters; ``params_classifier``: those of the classifier
      (``model.get_classifier()``, 0 when the model has none); ``params_backbone``: the rest;
      ``params_static_classifier``: what the model would have with a plain ``nn.Linear``
      classifier (equal to ``params`` unless the classifier is dynamic, as in CondConv's
      paper placement);
    - ``macs``: per image; ``macs_breakdown``: ``static`` (everything counted by
      ``FlopCounterMode``) and the dynamic layers' ``conv``, ``aggregation``, ``attention``,
      ``modulation``;
    - ``layers``: per dynamic layer (qualified name): type, input size, calls, the four parts
      and their total ``macs``;
    - ``input_size``.
    """
    measured = _measure(model, input_size)
    params = count_params(model)
    clf = _classifier(model)
    params_clf = count_params(clf) if clf is not None else 0
    static_clf = params
    if clf is not None and not isinstance(clf, nn.Linear):
        in_f, out_f = getattr(clf, "in_features", None), getattr(clf, "out_features", None)
        if in_f is not None and out_f is not None:
            static_clf = params - params_clf + in_f * out_f + out_f
    return {
        "params": params,
        "params_backbone": params - params_clf,
        "params_classifier": params_clf,
        "params_static_classifier": static_clf,
        "macs": measured["macs"],
        "macs_breakdown": measured["macs_breakdown"],
        "layers": measured["layers"],
        "input_size": tuple(int(s) for s in input_size),
    }


__all__ = ["count_params", "count_macs", "profile_model"]
