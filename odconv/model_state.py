"""A whole model's dynamic-layer state: finding its dynamic layers, setting their attention
temperature and execution strategy, loading its weights from a checkpoint."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .layers import DynamicConvBase
from .layers.kernelwarehouse import warehouse_layers
from .ops.cell_conv import CELL_STRATEGIES
from .ops.registry import check_strategy, valid_strategies


def dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConvBase]]:
    """All dynamic conv layers of ``model`` with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicConvBase)]


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the attention temperature of every dynamic layer of ``model`` (layers without a
    temperature, e.g. CondConv, ignore it). Returns the number of dynamic layers visited."""
    layers = dynamic_layers(model)
    for _, layer in layers:
        layer.update_temperature(temperature)
    return len(layers)


def set_strategy(model: nn.Module, name: str) -> int:
    """Set ``strategy`` on every dynamic conv layer of ``model`` when ``name`` is one of theirs
    (``"auto"`` or a registered strategy), and on its KernelWarehouse layers when it is one of
    theirs (``"auto"``, :data:`odconv.ops.cell_conv.CELL_STRATEGIES`: a name both have means
    the same algorithm). ValueError listing the valid names for a name of neither. Returns the
    number of layers changed."""
    kw_names = ("auto", *CELL_STRATEGIES)
    if name not in kw_names:
        try:
            check_strategy(name)
        except ValueError:
            raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(valid_strategies())}; "
                             f"KernelWarehouse layers: {', '.join(kw_names)}") from None
    layers = [layer for _, layer in dynamic_layers(model)] if name in valid_strategies() else []
    layers += warehouse_layers(model) if name in kw_names else []
    for layer in layers:
        layer.strategy = name
    return len(layers)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove a wrapper prefix (DDP's ``module.``, Lightning's ``model.``) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True):
    """Load weights saved from ``model``, a DDP wrapper of it (keys ``module.``), or a
    Lightning checkpoint of an ``ImageClassifier`` (``state_dict`` with keys ``model.``).

    Returns what ``load_state_dict`` returns (missing and unexpected keys).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"not a state dict: {type(state).__name__}")
    for prefix in ("module.", "model.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = strip_prefix(state, prefix)
    return model.load_state_dict(state, strict=strict)
