"""The built-in conv families: ``static``, ``odconv``, ``condconv``, ``dyconv`` and ``kw``
(KernelWarehouse, :mod:`odconv.kw_family`), registered by :mod:`odconv.families` on its first
lookup, before any other family."""

from __future__ import annotations

import re
from typing import Any, Optional

from torch import nn

from .families import ConvFamily, PlacementDefaults, TemperatureSchedule
from .kw_family import KWFamily
from .layers import CondConv2d, DyConv2d, ODConv2d
from .spec import ATTENTIONS, ConvSpec, validate_attentions

# Number of trailing blocks the CondConv paper makes dynamic, per model family.
CONDCONV_PAPER_LAST_BLOCKS = {"resnet": 3, "mobilenetv2": 6}


class StaticFamily(ConvFamily):
    """``static``: a plain ``nn.Conv2d``; no attention, no temperature."""

    name = "static"
    grammar = "static"
    examples = ("static",)
    dynamic = False

    def parse(self, text: str) -> Optional[ConvSpec]:
        return ConvSpec("static") if text == "static" else None

    def check(self, spec: ConvSpec) -> None:
        if spec.num != 1 or spec.attentions or spec.settings:
            raise ValueError("a static conv takes no kernel count and no attentions")

    def format(self, spec: ConvSpec) -> str:
        return "static"

    def build(self, spec, in_channels, out_channels, kernel_size, *, stride, padding, dilation, groups, bias,
              **options: Any) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias)

    def temperature_schedule(self, init, final, epochs) -> Optional[TemperatureSchedule]:
        return None


class ODConvFamily(ConvFamily):
    """``odconv<n>x[-<att>+<att>...]``: :class:`~odconv.layers.ODConv2d` (no bias)."""

    name = "odconv"
    title = "ODConv"
    grammar = "odconv<n>x[-<att>+<att>...]"
    grammar_notes = f"attentions: {', '.join(ATTENTIONS)}"
    examples = ("odconv1x", "odconv4x", "odconv1x-channel+spatial", "odconv4x-filter+kernel")
    options = frozenset({"reduction", "min_channel", "strategy"})
    layer_types = (ODConv2d,)
    _RE = re.compile(r"^odconv(\d+)x(?:-(.+))?$")

    def parse(self, text: str) -> Optional[ConvSpec]:
        m = self._RE.match(text)
        if not m:
            return None
        num, atts = int(m.group(1)), m.group(2)
        if atts is None:
            return ConvSpec("odconv", num, ConvSpec.full_attentions(num))
        names = atts.split("+")
        if len(set(names)) != len(names):
            raise ValueError(f"attention named twice in {atts!r}")
        return ConvSpec("odconv", num, frozenset(names))

    def check(self, spec: ConvSpec) -> None:
        if spec.num < 1:
            raise ValueError(f"kernel count must be >= 1 in a odconv spec, got {spec.num}")
        if spec.settings:
            raise ValueError(f"odconv takes no settings, got {spec.settings}")
        object.__setattr__(spec, "attentions", validate_attentions(spec.attentions, spec.num))

    def format(self, spec: ConvSpec) -> str:
        base = f"odconv{spec.num}x"
        if spec.attentions != ConvSpec.full_attentions(spec.num):
            base += "-" + "+".join(a for a in ATTENTIONS if a in spec.attentions)
        return base

    def build(self, spec, in_channels, out_channels, kernel_size, *, stride, padding, dilation, groups, bias,
              **options: Any) -> nn.Module:
        if bias:
            raise ValueError("ODConv2d has no bias (as the reference); use bias=False")
        return ODConv2d(in_channels, out_channels, kernel_size, kernel_num=spec.num, attentions=spec.attentions,
                        stride=stride, padding=padding, dilation=dilation, groups=groups, **options)


class CondConvFamily(ConvFamily):
    """``condconv<n>x``: :class:`~odconv.layers.CondConv2d` with n experts; no temperature.
    Paper placement: the last blocks, one router per block, a CondConv classifier."""

    name = "condconv"
    title = "CondConv"
    examples = ("condconv8x",)
    options = frozenset({"strategy", "routing"})
    internal_options = frozenset({"routing"})   # models set it for a router shared by a block's convs
    layer_types = (CondConv2d,)

    def build(self, spec, in_channels, out_channels, kernel_size, *, stride, padding, dilation, groups, bias,
              **options: Any) -> nn.Module:
        return CondConv2d(in_channels, out_channels, kernel_size, bias=bias, num_experts=spec.num, stride=stride,
                          padding=padding, dilation=dilation, groups=groups, **options)

    def placement_defaults(self, placement: str, model_family: str) -> PlacementDefaults:
        if placement == "paper":
            return PlacementDefaults(last_blocks=CONDCONV_PAPER_LAST_BLOCKS[model_family], classifier=True,
                                     shared_router=True)
        return super().placement_defaults(placement, model_family)

    def shared_router(self, spec: ConvSpec, in_channels: int) -> Optional[nn.Module]:
        from .models.placement import SharedRouter  # deferred: the model builders import the families
        return SharedRouter(in_channels, spec.num)

    def temperature_schedule(self, init, final, epochs) -> Optional[TemperatureSchedule]:
        return None


class DyConvFamily(ConvFamily):
    """``dyconv<n>x``: :class:`~odconv.layers.DyConv2d` with n kernels; temperature as ODConv's.
    Paper placement: every conv but the stem (downsample and MobileNetV2's last 1x1 included)."""

    name = "dyconv"
    title = "DyConv"
    examples = ("dyconv4x",)
    options = frozenset({"reduction", "strategy"})
    layer_types = (DyConv2d,)

    def build(self, spec, in_channels, out_channels, kernel_size, *, stride, padding, dilation, groups, bias,
              **options: Any) -> nn.Module:
        return DyConv2d(in_channels, out_channels, kernel_size, bias=bias, kernel_num=spec.num, stride=stride,
                        padding=padding, dilation=dilation, groups=groups, **options)

    def placement_defaults(self, placement: str, model_family: str) -> PlacementDefaults:
        if placement == "paper":
            return PlacementDefaults(downsample=True, head=True)
        return super().placement_defaults(placement, model_family)


BUILTIN_FAMILIES: tuple[ConvFamily, ...] = (StaticFamily(), ODConvFamily(), CondConvFamily(), DyConvFamily(),
                                             KWFamily())
