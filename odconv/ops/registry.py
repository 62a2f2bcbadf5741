"""The registry of exact execution strategies of :func:`odconv.functional.dynamic_conv2d`.

A strategy is a function ``fn(x, weight, channel, filter, spatial, kernel, bias, stride,
padding, dilation, groups) -> Tensor`` (arguments as in ``dynamic_conv2d``) that computes
the op exactly for a kernel that varies per example (``kernel`` or ``spatial`` given);
``dynamic_conv2d`` itself runs the shared-kernel case. Each strategy says whether it is
``exportable``: ``torch.export`` and the ONNX exporter with a dynamic batch dimension both
work and the exported program matches eager at other batch sizes.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

StrategyFn = Callable[..., Tensor]

# name -> strategy function, filled by odconv.strategies on import
STRATEGIES: dict[str, StrategyFn] = {}
# names of the exportable strategies (see the module doc); tests/test_export.py exports every
# strategy and checks this list both ways
EXPORTABLE_STRATEGIES: list[str] = []


def register_strategy(name: str, *, exportable: bool) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: register an exact strategy under ``name``; ``exportable``: it exports with a
    dynamic batch (module doc)."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = fn
        if exportable and name not in EXPORTABLE_STRATEGIES:
            EXPORTABLE_STRATEGIES.append(name)
        return fn

    return wrap


def valid_strategies() -> list[str]:
    """Every name ``strategy=`` accepts: ``"auto"`` and the registered strategies."""
    return ["auto", *sorted(STRATEGIES)]


def check_strategy(name: str) -> str:
    """``name`` if it is a valid strategy (or ``"auto"``), else ValueError listing the valid ones."""
    if name != "auto" and name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(valid_strategies())}")
    return name
