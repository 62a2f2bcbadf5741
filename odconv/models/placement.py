"""Where a model's dynamic convs go: the ``placement`` option of :func:`odconv.build_model`.

- ``"matched"`` (default): the conv spec goes where the official ODConv repo puts ODConv,
  whatever the spec's kind, so that only the conv changes between runs (controlled
  ablation). ResNets: every conv inside the residual blocks; the stem, the 1x1 downsample
  shortcut and the classifier stay static. MobileNetV2: every conv except the stem
  (expansion, depthwise and projection convs of every block, and the last 1x1 conv to 1280);
  static classifier. A CondConv layer routes on its own input.
- ``"paper"``: each baseline as its authors built it.

  * CondConv (Yang et al., 2019): the last 3 residual blocks of a ResNet, or the last 6
    inverted-residual blocks of a MobileNetV2, are dynamic, with one router
    ``sigmoid(Linear(GAP(block input)))`` per block shared by that block's convs; the
    classifier is a CondConv too (a 1x1 CondConv on the pooled features, with its own router
    and per-expert biases); downsample convs, the stem and MobileNetV2's last 1x1 conv stay
    static.
  * DyConv (Chen et al., 2020): every conv except the stem is dynamic, the ResNet
    downsample 1x1 and MobileNetV2's depthwise and last 1x1 convs included, each with its
    own attention; static classifier.
  * ODConv: its paper placement is its matched placement. ``static`` is the same under both.
  * KernelWarehouse (``kw`` specs), both placements: the official KW models (every block conv,
    the stride-2 downsample; MobileNetV2 also its stem and last 1x1 conv; see
    :mod:`odconv.kw_family`).

The number of experts/kernels is the spec's (the papers used ``condconv8x`` and
``dyconv4x``).

These rules are the families' placement defaults
(:meth:`odconv.families.ConvFamily.placement_defaults`): a registered family says where its
spec goes under each placement (by default: as ODConv).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..builtin_families import CONDCONV_PAPER_LAST_BLOCKS  # noqa: F401  (where it used to live)
from ..factory import make_conv
from ..families import get_conv_family, registered_layer_types
from ..layers import DynamicConvBase
from ..model_build import ConvSite, conv_site
from ..spec import ConvSpec, parse_conv_spec

PLACEMENTS: tuple[str, ...] = ("matched", "paper")
STATIC = ConvSpec("static")


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
    return placement


@dataclass(frozen=True)
class ModelPlan:
    """The conv spec of every part of a model, resolved from (spec, placement).

    ``blocks[i]`` is the spec of every conv inside residual block ``i`` (in forward order);
    ``shared_router`` says whether a CondConv block gets one router shared by its convs;
    ``head`` is MobileNetV2's last 1x1 conv; ``classifier`` is ``static`` (an ``nn.Linear``)
    or a dynamic spec (a :class:`DynamicLinear`); ``stem`` is the model's first conv (static
    unless the family's placement says otherwise, as KernelWarehouse's MobileNetV2).
    """

    spec: ConvSpec
    placement: str
    blocks: tuple[ConvSpec, ...]
    downsample: ConvSpec
    head: ConvSpec
    classifier: ConvSpec
    shared_router: bool = False
    conv_options: dict[str, Any] = field(default_factory=dict)
    stem: ConvSpec = STATIC

    def conv(self, spec: ConvSpec, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
             padding: int | None = None, groups: int = 1, bias: bool = False, shared_routing: bool = False,
             site: ConvSite | None = None) -> nn.Module:
        """Build one conv through :func:`odconv.make_conv` with the options that apply to its kind.
        ``site``: where the conv sits in the model, for the family's builder
        (:func:`odconv.families.current_conv_site`; KernelWarehouse names its warehouses from it)."""
        opts = {k: v for k, v in self.conv_options.items() if k in get_conv_family(spec.kind).options}
        if shared_routing:
            opts["routing"] = False
        with conv_site(site):
            return make_conv(spec, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                             groups=groups, bias=bias, **opts)

    def router(self, spec: ConvSpec, in_channels: int) -> "SharedRouter | None":
        """The block router when this block's convs share one (the family's
        :meth:`~odconv.families.ConvFamily.shared_router`), else ``None``."""
        if self.shared_router:
            return get_conv_family(spec.kind).shared_router(spec, in_channels)
        return None


def plan_model(family: str, num_blocks: int, conv: str | ConvSpec, placement: str,
               conv_options: dict[str, Any] | None = None) -> ModelPlan:
    """Resolve where ``conv`` goes in a model of ``family`` ("resnet" or "mobilenetv2") with
    ``num_blocks`` residual blocks."""
    spec = parse_conv_spec(conv)
    check_placement(placement)
    rule = get_conv_family(spec.kind).placement_defaults(placement, family)
    num_dynamic = num_blocks if rule.last_blocks is None else rule.last_blocks
    blocks = tuple(spec if i >= num_blocks - num_dynamic else STATIC for i in range(num_blocks))

    def where(on: bool) -> ConvSpec:
        return spec if on else STATIC

    return ModelPlan(spec, placement, blocks, downsample=where(rule.downsample), head=where(rule.head),
                     classifier=where(rule.classifier), shared_router=rule.shared_router,
                     conv_options=dict(conv_options or {}), stem=where(rule.stem))


class SharedRouter(nn.Module):
    """CondConv routing shared by the convs of one block: ``sigmoid(Linear(GAP(x)))``,
    (B, C, H, W) -> (B, n). Counted by :mod:`odconv.counting` through :meth:`mac_breakdown`."""

    def __init__(self, in_channels: int, num_experts: int) -> None:
        super().__init__()
        self.in_channels, self.num_experts = in_channels, num_experts
        self.fc = nn.Linear(in_channels, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3))))

    def mac_breakdown(self, in_hw: tuple[int, int]) -> dict[str, int]:
        """Pooling the input plus the routing FC, per example."""
        return {"conv": 0, "aggregation": 0, "modulation": 0,
                "attention": self.in_channels * in_hw[0] * in_hw[1] + self.in_channels * self.num_experts}

    def macs(self, in_hw: tuple[int, int]) -> int:
        return sum(self.mac_breakdown(in_hw).values())


class DynamicLinear(nn.Module):
    """A classifier built as a dynamic 1x1 conv on the pooled features (CondConv's paper
    classifier): (B, C) -> (B, num_classes). The experts share one bias (``self.bias``, as a
    static Linear's): with it the paper-placement models come to exactly the published counts
    (ResNet-18 81.35M, MobileNetV2 22.88M); per-expert biases would give MobileNetV2 22.89M."""

    def __init__(self, plan: ModelPlan, spec: ConvSpec, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.conv = plan.conv(spec, in_features, out_features, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        return self.conv(x.view(x.shape[0], self.in_features, 1, 1)).flatten(1) + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def make_classifier(plan: ModelPlan, in_features: int, num_classes: int) -> nn.Module:
    """``nn.Linear`` for a static classifier, else a :class:`DynamicLinear`."""
    if plan.classifier.kind == "static":
        return nn.Linear(in_features, num_classes)
    return DynamicLinear(plan, plan.classifier, in_features, num_classes)


def call_conv(conv: nn.Module, x, routing=None):
    """Call ``conv`` on ``x``, passing shared routing weights when there are some."""
    return conv(x) if routing is None else conv(x, routing=routing)


def init_static(model: nn.Module) -> None:
    """The static layers' init of the official repo (kaiming normal fan_out/ReLU for convs,
    BatchNorm 1/0), skipping dynamic layers (those of every registered family) and routers,
    which keep their own per-kernel init (their 5-D weight is never initialised as one tensor)."""
    skip = (DynamicConvBase, SharedRouter, *registered_layer_types())

    def visit(m: nn.Module) -> None:
        if isinstance(m, skip):
            return
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        for child in m.children():
            visit(child)

    visit(model)


def check_model_options(*, width: float, dropout: float, in_chans: int) -> None:
    """The options every model builder shares: a clear ValueError for a bad value."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
