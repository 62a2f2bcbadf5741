"""CondConv: conditionally parameterised convolution (Yang et al., NeurIPS 2019)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..functional import dynamic_conv2d
from .base import DynamicConvBase


class CondConv2d(DynamicConvBase):
    """``num_experts`` kernels mixed per example by routing weights
    ``r = sigmoid(Linear(GAP(x)))`` (independent sigmoids, not a softmax, so they need not sum
    to 1): ``kernel_b = sum_i r_b,i W_i``, ``bias_b = sum_i r_b,i b_i``.

    Choices the paper leaves open (documented in docs/layers.md): the router is a Linear with
    bias on the globally average-pooled input of this layer, with no dropout on the routing
    weights and no temperature; each expert is initialised on its own like a static conv.
    ``forward(x, routing)`` accepts routing weights (B, n) computed elsewhere, for a router
    shared by several layers.

    Shapes: (B, in_planes, H, W) -> (B, out_planes, H', W'); ``weight`` (n, O, I/g, k, k).
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, num_experts: int = 8,
                 strategy: str = "auto", routing: bool = True) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self._init_conv(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, num_experts, strategy)
        self.num_experts = num_experts
        self.routing = nn.Linear(in_planes, num_experts) if routing else None
        self._create_kernels(bias=bias)   # each expert on its own with the static conv rule; biases zero

    def routing_weights(self, x: Tensor) -> Tensor:
        """(B, I, H, W) -> routing weights (B, n) in (0, 1)."""
        if self.routing is None:
            raise RuntimeError("this CondConv2d has no router of its own: pass routing weights to forward()")
        return torch.sigmoid(self.routing(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor, routing: Optional[Tensor] = None) -> Tensor:
        r = self.routing_weights(x) if routing is None else routing
        return dynamic_conv2d(x, self.weight, kernel=r, bias=self.bias, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, groups=self.groups, strategy=self.strategy)

    def _attention_fc_macs(self) -> Optional[int]:
        return None if self.routing is None else self.in_planes * self.num_experts

    def _repr_fields(self):
        return [("groups", self.groups), ("num_experts", self.num_experts), ("bias", self.bias is not None),
                ("strategy", self.strategy)]
