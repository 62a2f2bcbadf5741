"""The one conv factory every model builds its convs through."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .layers import CondConv2d, DyConv2d, ODConv2d
from .spec import ConvSpec, parse_conv_spec

# Keyword options each kind accepts (beyond the conv geometry); anything else is an error.
CONV_OPTIONS: dict[str, frozenset[str]] = {
    "static": frozenset(),
    "odconv": frozenset({"reduction", "min_channel", "strategy"}),
    "condconv": frozenset({"strategy", "routing"}),
    "dyconv": frozenset({"reduction", "strategy"}),
}


def make_conv(spec: str | ConvSpec, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
              padding: Optional[int] = None, dilation: int = 1, groups: int = 1, bias: bool = False,
              **options: Any) -> nn.Module:
    """Build the conv named by ``spec`` (see :mod:`odconv.spec`).

    ``padding`` defaults to "same" for odd kernels at stride 1 (``dilation * (k - 1) // 2``).
    ``options`` are the kind's non-identity options (``reduction``, ``min_channel``,
    ``strategy``...); options meant for another kind are ignored only when ``None``.
    Returns an ``nn.Conv2d`` for ``static``, else the dynamic layer. Shapes: (B, in, H, W) ->
    (B, out, H', W').
    """
    s = parse_conv_spec(spec)
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    opts = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(opts) - CONV_OPTIONS[s.kind])
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to {s.kind} convs (spec {str(s)!r}); "
                         f"valid: {sorted(CONV_OPTIONS[s.kind]) or 'none'}")
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if s.kind == "static":
        return nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias, **geometry)
    if s.kind == "odconv":
        if bias:
            raise ValueError("ODConv2d has no bias (as the reference); use bias=False")
        return ODConv2d(in_channels, out_channels, kernel_size, kernel_num=s.num, attentions=s.attentions,
                        **geometry, **opts)
    if s.kind == "condconv":
        return CondConv2d(in_channels, out_channels, kernel_size, bias=bias, num_experts=s.num, **geometry, **opts)
    return DyConv2d(in_channels, out_channels, kernel_size, bias=bias, kernel_num=s.num, **geometry, **opts)
