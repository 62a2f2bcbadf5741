"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022)."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import dynamic_conv2d
from ..spec import ATTENTIONS, validate_attentions
from .base import DynamicConvBase, TemperatureBuffer, init_attention_head


class OmniAttention(TemperatureBuffer):
    """The attention head of ODConv: GAP -> 1x1 conv (no bias) -> BN -> ReLU, then one 1x1
    conv head per attention.

    Heads (each built only if its attention is active): ``channel_fc`` -> (B, in_planes),
    ``filter_fc`` -> (B, out_planes), ``spatial_fc`` -> (B, k, k), ``kernel_fc`` -> (B, n).
    Channel, filter and spatial attentions are ``sigmoid(logits / T)``; kernel attention is
    ``softmax(logits / T)`` over the n kernels.

    Batch size 1 in training mode: BatchNorm cannot estimate batch statistics from one
    value per channel (the reference raises). This head then normalises with its running
    statistics, as in eval mode, and leaves them unchanged.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, kernel_num: int,
                 attentions: frozenset[str], reduction: float = 0.0625, min_channel: int = 16) -> None:
        super().__init__()
        hidden = max(int(in_planes * reduction), min_channel)
        self.hidden = hidden
        self.kernel_size = kernel_size
        self.kernel_num = kernel_num
        self.attentions = attentions
        self._init_temperature(1.0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        # Creation order matters: it fixes the RNG stream, so that a seeded layer starts from
        # the same numbers as the reference.
        if "channel" in attentions:
            self.channel_fc = nn.Conv2d(hidden, in_planes, 1, bias=True)
        if "filter" in attentions:
            self.filter_fc = nn.Conv2d(hidden, out_planes, 1, bias=True)
        if "spatial" in attentions:
            self.spatial_fc = nn.Conv2d(hidden, kernel_size * kernel_size, 1, bias=True)
        if "kernel" in attentions:
            self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_attention_head(self)

    def _normalize(self, z: Tensor) -> Tensor:
        if self.training and z.shape[0] == 1:
            bn = self.bn
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.bn(z)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, I, H, W) -> dict of the active attentions, shapes as in the class doc."""
        batch = x.shape[0]
        z = self.relu(self._normalize(self.fc(self.avgpool(x)))).flatten(1)  # (B, hidden)
        # The heads all read z: one GEMM over their stacked weights (the parameters stay
        # separate 1x1 convs, named as in the reference), one temperature division, one
        # sigmoid over the sigmoid heads (stacked first) and one softmax for the kernel head.
        heads = [a for a in ATTENTIONS if a in self.attentions]
        convs = [getattr(self, f"{a}_fc") for a in heads]
        weight = torch.cat([c.weight.flatten(1) for c in convs]) if len(convs) > 1 else convs[0].weight.flatten(1)
        bias = torch.cat([c.bias for c in convs]) if len(convs) > 1 else convs[0].bias
        logits = torch.addmm(bias, z, weight.t()) / self.temperature
        sigmoid_heads = [(a, c.out_channels) for a, c in zip(heads, convs) if a != "kernel"]
        n_sigmoid = sum(size for _, size in sigmoid_heads)
        out: dict[str, Tensor] = {}
        if sigmoid_heads:
            probs = torch.sigmoid(logits[:, :n_sigmoid]).split([size for _, size in sigmoid_heads], dim=1)
            out.update(zip([a for a, _ in sigmoid_heads], probs))
        if "kernel" in self.attentions:
            out["kernel"] = F.softmax(logits[:, n_sigmoid:], dim=1)
        if "spatial" in out:
            out["spatial"] = out["spatial"].reshape(batch, self.kernel_size, self.kernel_size)
        return out


class ODConv2d(DynamicConvBase):
    """Omni-dimensional dynamic convolution with individually switchable attentions.

    Args:
        attentions: any subset of ``{"channel", "filter", "spatial", "kernel"}``. Default (None):
            all four, as the reference (with ``kernel_num=1``: channel, filter, spatial).
            ``kernel`` requires ``kernel_num >= 2`` and ``kernel_num >= 2`` requires ``kernel``.
            Following the reference, filter attention is never built for a depthwise conv,
            spatial attention never for k = 1, and kernel attention never for n = 1;
            ``active_attentions`` says which are actually built. With none active the layer is
            exactly ``nn.Conv2d`` (weight ``(1, O, I/g, k, k)``, no attention branch).

    Shapes: input (B, in_planes, H, W) -> output (B, out_planes, H', W').
    Parameter names and shapes match the reference implementation with all attentions on.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, reduction: float = 0.0625, kernel_num: int = 4,
                 min_channel: int = 16, attentions: Optional[Iterable[str]] = None, strategy: str = "auto") -> None:
        super().__init__()
        self._init_conv(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, kernel_num, strategy)
        if attentions is None:  # the reference: all four, kernel attention only when there are kernels to mix
            attentions = ATTENTIONS if kernel_num >= 2 else ATTENTIONS[:3]
        requested = validate_attentions(frozenset(attentions) if not isinstance(attentions, str) else attentions,
                                        kernel_num)
        self.reduction, self.min_channel = reduction, min_channel
        self.requested_attentions = requested
        active = set(requested)
        if in_planes == groups and in_planes == out_planes:  # depthwise: no filter attention
            active.discard("filter")
        if kernel_size == 1:  # pointwise: no spatial attention
            active.discard("spatial")
        self.active_attentions = frozenset(active)
        if self.active_attentions:
            self.attention = OmniAttention(in_planes, out_planes, kernel_size, kernel_num, self.active_attentions,
                                           reduction=reduction, min_channel=min_channel)
        else:
            self.attention = None
        self._create_kernels(torch.randn)   # randn as the reference: the same RNG stream

    def forward(self, x: Tensor) -> Tensor:
        att = self.attention(x) if self.attention is not None else {}
        return dynamic_conv2d(x, self.weight, **att, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, groups=self.groups, strategy=self.strategy)

    # cost accounting (see DynamicConvBase.mac_breakdown)
    def _attention_fc_macs(self) -> Optional[int]:
        if self.attention is None:
            return None
        h = self.attention.hidden
        heads = {"channel": self.in_planes, "filter": self.out_planes,
                 "spatial": self.kernel_size ** 2, "kernel": self.kernel_num}
        return self.in_planes * h + h * sum(heads[a] for a in self.active_attentions)

    def _aggregation_macs(self) -> int:
        if "kernel" not in self.active_attentions and "spatial" not in self.active_attentions:
            return 0
        return super()._aggregation_macs()

    def _modulation_macs(self, in_hw, out_hw) -> int:
        macs = 0
        if "channel" in self.active_attentions:
            macs += self.in_planes * in_hw[0] * in_hw[1]
        if "filter" in self.active_attentions:
            macs += self.out_planes * out_hw[0] * out_hw[1]
        return macs

    def _repr_fields(self):
        atts = "+".join(a for a in ATTENTIONS if a in self.active_attentions) or "none"
        return [("dilation", self.dilation), ("groups", self.groups), ("kernel_num", self.kernel_num),
                ("attentions", atts), ("strategy", self.strategy)]
