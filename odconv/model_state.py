"""A whole model's dynamic-layer state: finding its dynamic layers, setting their attention
temperature and execution strategy, loading its weights from a checkpoint."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .layers import DynamicConvBase
from .ops.registry import check_strategy


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
    """Set ``strategy`` on every dynamic conv layer of ``model`` (``"auto"`` or a registered
    name; ValueError listing the valid ones otherwise). Returns the number of layers changed."""
    check_strategy(name)
    layers = dynamic_layers(model)
    for _, layer in layers:
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
