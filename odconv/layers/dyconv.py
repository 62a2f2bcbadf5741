"""DyConv: dynamic convolution, attention over convolution kernels (Chen et al., CVPR 2020)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import dynamic_conv2d
from .base import DynamicConvBase, TemperatureBuffer, init_attention_head


class KernelAttention(TemperatureBuffer):
    """GAP -> 1x1 conv (I -> hidden, bias) -> ReLU -> 1x1 conv (hidden -> K, bias) -> softmax(z / T).

    ``hidden = max(int(in_planes * reduction), 1)`` (reduction 1/4 in the paper). The paper builds
    this attention as a squeeze-and-excitation branch, whose two FC layers carry biases; with a
    bias on the first one the paper-placement models come to exactly the published parameter
    counts (ResNet-18 45.47M, ResNet-50 100.88M, MobileNetV2 12.40M), without it ResNet-50
    comes to 100.87M.
    (B, I, H, W) -> (B, K), rows summing to 1.
    """

    def __init__(self, in_planes: int, kernel_num: int, reduction: float = 0.25, temperature: float = 1.0) -> None:
        super().__init__()
        self.hidden = max(int(in_planes * reduction), 1)
        self._init_temperature(temperature)
        self.fc1 = nn.Conv2d(in_planes, self.hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(self.hidden, kernel_num, 1, bias=True)
        init_attention_head(self)

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return F.softmax(z.flatten(1) / self.temperature, dim=1)


class DyConv2d(DynamicConvBase):
    """K kernels (and biases) aggregated per example by softmax attention ``pi(x)``:
    ``kernel_b = sum_k pi_b,k W_k``, ``bias_b = sum_k pi_b,k b_k``.

    The temperature starts where the layer is told (``update_temperature``; the training
    schedule anneals 30 -> 1 like ODConv's). Each kernel is initialised on its own with the
    static conv rule. Shapes: (B, in_planes, H, W) -> (B, out_planes, H', W').
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, kernel_num: int = 4,
                 reduction: float = 0.25, strategy: str = "auto") -> None:
        super().__init__()
        if kernel_num < 1:
            raise ValueError(f"kernel_num must be >= 1, got {kernel_num}")
        self._init_conv(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, kernel_num, strategy)
        self.attention = KernelAttention(in_planes, kernel_num, reduction)
        self._create_kernels(bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return dynamic_conv2d(x, self.weight, kernel=self.attention(x), bias=self.bias, stride=self.stride,
                              padding=self.padding, dilation=self.dilation, groups=self.groups,
                              strategy=self.strategy)

    def _attention_fc_macs(self) -> int:
        h = self.attention.hidden
        return self.in_planes * h + h * self.kernel_num

    def _repr_fields(self):
        return [("groups", self.groups), ("kernel_num", self.kernel_num), ("bias", self.bias is not None),
                ("strategy", self.strategy)]
