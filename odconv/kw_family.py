"""The ``kw`` conv family: KernelWarehouse (Li & Yao, ICML 2024) through the conv-family registry.

Specs are the official config names: ``kw1d4x``, ``kw1d2x`` (1/4, 1/2 as many warehouse cells as
the layers' kernels are cut into), ``kw1x``, ``kw2x``, ``kw4x`` (``kw<n>x``, ``kw1d<d>x``). A KW conv
belongs to a model: its cells live in a warehouse shared by the layers of a stage, so the family
builds only inside :func:`odconv.build_model`. ``begin_model`` starts a build state, every conv
reserves a :class:`~odconv.layers.kernelwarehouse.KWConv2d` in the warehouse its
:class:`~odconv.families.ConvSite` names (the official names, stage handover included), and
``end_model`` registers the :class:`~odconv.layers.kernelwarehouse.KernelWarehouseManager` as the
model's ``warehouse_manager`` and runs ``store()`` and ``allocate(model)``.

Defaults (the official ``configs/``, per model family; every one a ``build_model`` option):
``reduction`` 0.0625; ``cell_inplane_ratio`` = ``cell_outplane_ratio`` = 0.5 below 1x, else 1;
``sharing_range`` ``("layer", "conv")`` for ResNets, ``("layer", "pwconv")`` for MobileNetV2 up to
1x and ``("layer",)`` above; ``nonlocal_basis_ratio`` 0.0625 for a bottleneck ResNet below 1x (the
official ResNet-50 kw1d2x), else 1; ``spatial_partition`` True. See docs/layers.md, "KernelWarehouse".
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Optional

from torch import nn

from .families import ConvFamily, PlacementDefaults, TemperatureSchedule
from .layers.kernelwarehouse import KernelWarehouseManager, KWConv2d, warehouse_layers
from .model_build import ConvSite, current_conv_site, current_model_build
from .spec import ConvSpec

#: The official MobileNetV2 ``kw_stage_setting``: the warehouse stage of each row of the
#: inverted-residual setting (a row whose stage differs from the previous row's hands its first
#: block over to the previous stage's warehouse).
MOBILENETV2_KW_STAGES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 6)
KW_REDUCTION = 0.0625
KW_OPTIONS = ("reduction", "cell_inplane_ratio", "cell_outplane_ratio", "sharing_range", "nonlocal_basis_ratio",
              "spatial_partition")
#: A warning when a model's KW attention heads hold more than this many times the parameters of
#: the static kernels they replace (tiny gcds: e.g. 1280 outputs cut into 8-channel cells).
ATTENTION_WARN_FACTOR = 10.0


class KWAttentionCostWarning(UserWarning):
    """A warehouse's attention heads dwarf its kernels (cells from a small gcd of channel counts)."""


def cell_num_ratio(spec: ConvSpec) -> float:
    """Warehouse cells / the cells the layers are cut into: n for ``kw<n>x``, 1/d for ``kw1d<d>x``."""
    return spec.num / spec.setting("divisor", 1)


def official_settings(spec: ConvSpec, model_family: str = "resnet", block_type: str = "") -> dict[str, Any]:
    """The manager settings of the official config of ``spec`` for a model of ``model_family``
    (``"resnet"``, ``"mobilenetv2"``; ``block_type`` ``"bottleneck"`` for ResNet-50)."""
    ratio = cell_num_ratio(spec)
    plane = 0.5 if ratio < 1 else 1.0
    if model_family == "mobilenetv2":
        sharing: tuple[str, ...] = ("layer", "pwconv") if ratio <= 1 else ("layer",)
    else:
        sharing = ("layer", "conv")
    basis = 0.0625 if model_family == "resnet" and block_type == "bottleneck" and ratio < 1 else 1.0
    return {"reduction": KW_REDUCTION, "cell_num_ratio": ratio, "cell_inplane_ratio": plane,
            "cell_outplane_ratio": plane, "sharing_range": sharing, "nonlocal_basis_ratio": basis,
            "spatial_partition": True}


def _resnet_warehouse_name(site: ConvSite, stride: int) -> Optional[str]:
    """The official ``kw_resnet`` name of a conv (None: a plain conv). The official ``layer_idx``
    counts on across a stage's first block, so the handover names carry the previous stage's
    block count."""
    s, b, p = site.stage, site.block, site.position
    prev = site.stage_blocks[s - 1] if s > 0 and len(site.stage_blocks) >= s else 0
    if site.role == "downsample":                 # stride 2: the previous stage's warehouse; stride 1: plain
        return f"stage{s - 1}_layer{prev + 1}_conv0" if stride != 1 else None
    if site.role != "block":                      # the official stem is plain
        return None
    if b == 0 and p == 0:                         # a stage's first conv: the previous stage's warehouse
        stage = s - 1
        if stage < 0:
            if site.block_type == "bottleneck":   # ResNet-50's layer1.0.conv1 is plain (official)
                return None
            stage = 0
        return f"stage{stage}_layer{prev}_conv0"
    return f"stage{s}_layer{b}_conv{p}"


def _mobilenetv2_layer_index(stage_blocks: tuple[int, ...], row: int, block: int) -> tuple[int, bool]:
    """(official ``layer_idx``, handover) of block ``block`` of setting row ``row``; for the head
    (``row == len(stage_blocks)``) the final ``layer_idx``."""
    layer = 0
    for r, count in enumerate(stage_blocks):
        for i in range(count):
            handover = i == 0 and r > 0 and MOBILENETV2_KW_STAGES[r] != MOBILENETV2_KW_STAGES[r - 1]
            if (r, i) == (row, block):
                return layer, handover
            layer = 0 if handover else layer + 1
    return layer, False


def _mobilenetv2_warehouse_name(site: ConvSite) -> Optional[str]:
    """The official ``kw_mobilenetv2`` name of a conv (the stem and the head are KW too)."""
    if len(site.stage_blocks) != len(MOBILENETV2_KW_STAGES):
        raise ValueError(f"KernelWarehouse's MobileNetV2 stages need {len(MOBILENETV2_KW_STAGES)} setting rows, "
                         f"got {len(site.stage_blocks)}")
    if site.role == "stem":
        return "stage0_conv0"
    if site.role == "head":
        layer, _ = _mobilenetv2_layer_index(site.stage_blocks, len(site.stage_blocks), 0)
        return f"stage{MOBILENETV2_KW_STAGES[-1]}_layer{layer}_pwconv1"
    layer, handover = _mobilenetv2_layer_index(site.stage_blocks, site.stage, site.block)
    stage = MOBILENETV2_KW_STAGES[site.stage] - (1 if handover else 0)
    conv = ("pwconv0", "dwconv0", "pwconv1")[site.position]
    return f"stage{stage}_layer{layer}_{conv}"


def official_warehouse_name(site: ConvSite, stride: int = 1) -> Optional[str]:
    """The warehouse name the official model code gives the conv at ``site`` (before the sharing
    range merges names into warehouses), or None where the official model has a plain conv."""
    if site.model_family == "resnet":
        return _resnet_warehouse_name(site, stride)
    if site.model_family == "mobilenetv2":
        return _mobilenetv2_warehouse_name(site)
    raise ValueError(f"KernelWarehouse has no warehouse layout for model family {site.model_family!r}")


class KWModelBuild:
    """A model build's KernelWarehouse state: the spec, the user's options and (from the first
    conv on, when the model family is known) the manager."""

    def __init__(self, spec: ConvSpec, options: dict[str, Any]) -> None:
        self.spec, self.options = spec, dict(options)
        self.manager: Optional[KernelWarehouseManager] = None
        self.settings: dict[str, Any] = {}
        self.unhinted = 0
        self.model_family = "resnet"

    def manager_for(self, site: Optional[ConvSite]) -> KernelWarehouseManager:
        if self.manager is None:
            self.model_family = site.model_family if site is not None else "resnet"
            settings = official_settings(self.spec, self.model_family, site.block_type if site is not None else "")
            settings.update(self.user_options)
            self.settings = settings
            self.manager = KernelWarehouseManager(**settings)
        return self.manager

    @property
    def user_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k in KW_OPTIONS and v is not None}

    def per_warehouse_settings(self) -> None:
        """MobileNetV2 below 1x (no official config of this model): the stem's and the depthwise
        warehouses stay at 1x with whole-gcd cells (their kernels cannot be cut into 1/4 evenly,
        and they hold few parameters), the pointwise ones take the spec's ratio; an option the
        user set applies to every warehouse."""
        ratio = cell_num_ratio(self.spec)
        if self.model_family != "mobilenetv2" or ratio >= 1 or self.manager is None:
            return
        names = self.manager.warehouse_names
        at_one = [name == "stage0_conv0" or "dwconv" in name for name in names]
        given = self.user_options
        per = {"cell_num_ratio": ratio, "cell_inplane_ratio": self.settings["cell_inplane_ratio"],
               "cell_outplane_ratio": self.settings["cell_outplane_ratio"]}
        for key, value in per.items():
            if key not in given:
                self.manager.settings[key] = [1.0 if one else value for one in at_one]

    def warehouse_name(self, site: Optional[ConvSite], stride: int) -> Optional[str]:
        if site is None:             # a builder without hints: every such conv in one warehouse
            self.unhinted += 1
            return f"stage0_layer{self.unhinted - 1}_conv0"
        return official_warehouse_name(site, stride)


def _warn_attention_cost(model: nn.Module, state: KWModelBuild) -> None:
    """Warn when the model's KW attention heads hold more than ATTENTION_WARN_FACTOR times the
    parameters of the static kernels they replace (never for the official models)."""
    manager = state.manager
    layers = [m for m in warehouse_layers(model) if m.manager is manager]
    per_warehouse = [0] * len(manager.weights)
    for layer in layers:
        per_warehouse[layer.warehouse_id] += sum(p.numel() for p in layer.attention.parameters())
    kernels = sum(math.prod(layer.weight_shape) for layer in layers)
    if sum(per_warehouse) <= ATTENTION_WARN_FACTOR * kernels:
        return
    heaviest = sorted(range(len(per_warehouse)), key=lambda i: -per_warehouse[i])[:3]
    names = manager.warehouse_names
    detail = "; ".join(f"{names[i]!r}: {per_warehouse[i]:,} ({tuple(manager.weights[i].shape)[0]} cells of "
                       f"{'x'.join(map(str, tuple(manager.weights[i].shape)[1:3]))} channels)" for i in heaviest)
    warnings.warn(f"{state.spec}: the attention heads hold {sum(per_warehouse):,} parameters, "
                  f"{sum(per_warehouse) / kernels:.0f}x the {kernels:,} of the kernels they replace (heaviest "
                  f"warehouses: {detail}): the cells come from a small gcd of the layers' channel counts "
                  f"(KernelWarehouse's rule); another width, or nonlocal_basis_ratio < 1, shrinks them",
                  KWAttentionCostWarning, stacklevel=4)


class KWFamily(ConvFamily):
    """``kw<n>x`` / ``kw1d<d>x``: KernelWarehouse convs sharing per-stage warehouses of kernel
    cells (:mod:`odconv.kw_family`). Both placements: the official KW models' (every block conv,
    the stride-2 downsample; MobileNetV2 also its stem and last 1x1 conv). Temperature: the blend
    weight of the initial cell assignment, 1 -> 0 over the training module's
    ``temperature_epochs``."""

    name = "kw"
    title = "KernelWarehouse"
    grammar = "kw<n>x | kw1d<d>x"
    grammar_notes = "kw1d<d>x: 1/d as many warehouse cells as kernel cells (kw1d4x, kw1d2x)"
    examples = ("kw1d4x", "kw1d2x", "kw1x", "kw2x", "kw4x")
    options = frozenset(KW_OPTIONS)
    layer_types = (KWConv2d,)
    _RE = re.compile(r"^kw(?:(\d+)x|1d(\d+)x)$")

    def parse(self, text: str) -> Optional[ConvSpec]:
        m = self._RE.match(text)
        if not m:
            if re.match(r"^kw\d", text):
                raise ValueError("KernelWarehouse specs read kw<n>x or kw1d<d>x (kw1d4x, kw1d2x, kw1x, kw2x, kw4x)")
            return None
        if m.group(1) is not None:
            return ConvSpec("kw", int(m.group(1)))
        return ConvSpec("kw", 1, settings=(("divisor", int(m.group(2))),))

    def check(self, spec: ConvSpec) -> None:
        if spec.num < 1:
            raise ValueError(f"the cell number ratio of a kw spec must be >= 1 or 1/d, got {spec.num}")
        if spec.attentions:
            raise ValueError("kw takes no attention list (only odconv does)")
        extra = sorted(k for k, _ in spec.settings if k != "divisor")
        if extra:
            raise ValueError(f"kw specs take only the setting 'divisor' (kw1d<d>x), got {extra}")
        divisor = spec.setting("divisor")
        if divisor is not None:
            if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 2:
                raise ValueError(f"kw1d<d>x needs an integer d >= 2, got {divisor!r} (kw1d1x is kw1x)")
            if spec.num != 1:
                raise ValueError(f"kw1d<d>x has numerator 1, got {spec.num}")

    def format(self, spec: ConvSpec) -> str:
        divisor = spec.setting("divisor")
        return f"kw1d{divisor}x" if divisor is not None else f"kw{spec.num}x"

    def begin_model(self, spec: ConvSpec, conv_options: dict[str, Any]) -> KWModelBuild:
        return KWModelBuild(spec, conv_options)

    def build(self, spec, in_channels, out_channels, kernel_size, *, stride, padding, dilation, groups, bias,
              **options: Any) -> nn.Module:
        build = current_model_build()
        state = build.state if build is not None else None
        if not isinstance(state, KWModelBuild):
            raise ValueError(f"a {spec} conv shares its warehouse with the other layers of its model: build it "
                             f"through odconv.build_model(..., conv={str(spec)!r}), or reserve layers from an "
                             f"odconv.layers.kernelwarehouse.KernelWarehouseManager yourself")
        site = current_conv_site()
        name = state.warehouse_name(site, stride)
        manager = state.manager_for(site)
        if name is None:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                             dilation=dilation, groups=groups, bias=bias)
        return manager.reserve(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, bias=bias, warehouse_name=name)

    def end_model(self, model: nn.Module, state: Any) -> None:
        if not isinstance(state, KWModelBuild) or state.manager is None:
            return
        if "warehouse_manager" in model._modules:
            raise ValueError("the model already has a 'warehouse_manager' submodule")
        model.warehouse_manager = state.manager
        state.per_warehouse_settings()
        try:
            state.manager.store()
            state.manager.allocate(model)
            _warn_attention_cost(model, state)
        except ValueError as err:
            raise ValueError(f"{state.spec} cannot cut this model's kernels into warehouse cells: {err}. The cells "
                             f"come from the gcd of each warehouse's channel counts times cell_inplane_ratio / "
                             f"cell_outplane_ratio; pick a width whose stages share a larger divisor, or set "
                             f"those ratios (e.g. 1.0)") from None

    def placement_defaults(self, placement: str, model_family: str) -> PlacementDefaults:
        mbv2 = model_family == "mobilenetv2"
        return PlacementDefaults(downsample=True, head=mbv2, stem=mbv2)

    def temperature_schedule(self, init: float, final: float, epochs: float) -> Optional[TemperatureSchedule]:
        return TemperatureSchedule(1.0, 0.0, epochs, targets=warehouse_layers)


__all__ = ["KWFamily", "KWModelBuild", "KWAttentionCostWarning", "official_settings", "official_warehouse_name",
           "cell_num_ratio",
           "MOBILENETV2_KW_STAGES"]
