"""The one conv factory every model builds its convs through: the spec's family builds it
(:mod:`odconv.families`)."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .families import conv_families, get_conv_family
from .spec import ConvSpec, parse_conv_spec


def conv_options(kind: str) -> frozenset[str]:
    """The keyword options the family ``kind`` accepts (beyond the conv geometry)."""
    return frozenset(get_conv_family(kind).options)


def __getattr__(name: str):
    # CONV_OPTIONS (kind -> options), computed on use: families may be registered at any time.
    if name == "CONV_OPTIONS":
        return {k: frozenset(f.options) for k, f in conv_families().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_conv(spec: str | ConvSpec, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
              padding: Optional[int] = None, dilation: int = 1, groups: int = 1, bias: bool = False,
              **options: Any) -> nn.Module:
    """Build the conv named by ``spec`` (see :mod:`odconv.spec`) with its family's builder.

    ``padding`` defaults to "same" for odd kernels at stride 1 (``dilation * (k - 1) // 2``).
    ``options`` are the family's non-identity options (``reduction``, ``min_channel``,
    ``strategy``...); options meant for another family are ignored only when ``None``.
    Returns an ``nn.Conv2d`` for ``static``, else the dynamic layer. Shapes: (B, in, H, W) ->
    (B, out, H', W').
    """
    s = parse_conv_spec(spec)
    family = get_conv_family(s.kind)
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    opts = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(opts) - set(family.options))
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to {s.kind} convs (spec {str(s)!r}); "
                         f"valid: {sorted(family.options) or 'none'}")
    return family.build(s, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, bias=bias, **opts)
