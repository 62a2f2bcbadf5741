"""Export models with dynamic convs with a dynamic batch dimension.

The reference strategy (``grouped``) runs one conv with ``groups = groups * batch`` and the
``fused`` strategies loop over batch chunks in Python: the batch size becomes part of the
graph. :func:`export_model` therefore exports with the ``"auto"`` choice, which under
``torch.export`` only picks exportable strategies (``mix`` when n * L is small, else ``bmm``;
see :data:`odconv.ops.registry.EXPORTABLE_STRATEGIES`), whatever strategy the layers were set
to, or with one exportable strategy forced on every layer.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .autotune import use_strategy
from .ops.registry import EXPORTABLE_STRATEGIES


def _check_exportable(strategy: str) -> None:
    if strategy != "auto" and strategy not in EXPORTABLE_STRATEGIES:
        raise ValueError(f"strategy {strategy!r} cannot be exported with a dynamic batch; use 'auto' or one of "
                         f"{', '.join(EXPORTABLE_STRATEGIES)}")


def export_model(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True, max_batch: int = 4096,
                 strategy: str = "auto", strict: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` (put in eval mode) on ``example`` (B, C, H, W), with the
    batch dimension dynamic (1..``max_batch``) unless ``dynamic_batch`` is False.

    ``strategy``: forced on every dynamic conv while tracing; ``"auto"`` (default) or one of
    :data:`~odconv.ops.registry.EXPORTABLE_STRATEGIES` (ValueError otherwise).
    """
    _check_exportable(strategy)
    model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic_shapes = ({0: batch},)
    with use_strategy(strategy), torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=strict)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, *, max_batch: int = 4096,
                strategy: str = "auto", opset_version: Optional[int] = None):
    """Export ``model`` to ONNX at ``path`` with a dynamic batch dimension (needs ``onnx``;
    uses the ``torch.export``-based exporter). ``strategy`` as in :func:`export_model`."""
    _check_exportable(strategy)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    kwargs = {} if opset_version is None else {"opset_version": opset_version}
    with use_strategy(strategy), torch.no_grad():
        return torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=({0: batch},),
                                 input_names=["input"], output_names=["output"], **kwargs)
