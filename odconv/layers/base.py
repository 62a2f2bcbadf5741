"""What every dynamic conv layer shares: geometry, kernels and their init, temperature
handling, cost accounting and ``extra_repr``."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ..ops.primitives import conv_output_hw
from ..ops.registry import check_strategy


def register_temperature(module: nn.Module, value: float) -> None:
    """Give ``module`` a ``temperature`` buffer (a 0-d tensor, updated in place) that state dicts
    written without it still load into with ``strict=True``, keeping the current value.

    A buffer rather than a float: it is saved in checkpoints, and a change does not make
    ``torch.compile`` recompile. The reference ODConv and the official KernelWarehouse keep
    their temperature as a float, so their state dicts have no such key: a public
    ``load_state_dict`` pre-hook supplies the module's own value.
    """
    module.register_buffer("temperature", torch.tensor(float(value)))
    module.register_load_state_dict_pre_hook(_supply_missing_temperature)


def _supply_missing_temperature(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    # A module-level function taking the module as an argument: a deep copy's hook then acts
    # on the copy, not on the module it was copied from.
    state_dict.setdefault(prefix + "temperature", module.temperature.detach().clone())


class TemperatureBuffer(nn.Module):
    """Mixin for attention modules whose logits are divided by a ``temperature`` buffer
    (:func:`register_temperature`)."""

    temperature: torch.Tensor

    def _init_temperature(self, value: float = 1.0) -> None:
        register_temperature(self, value)

    def update_temperature(self, temperature: float) -> None:
        """Set the softmax/sigmoid temperature (all attention logits are divided by it)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))


def init_attention_head(module: nn.Module, weighted: tuple[type[nn.Module], ...] = (nn.Conv2d,),
                        norms: tuple[type[nn.Module], ...] = (nn.BatchNorm2d,)) -> None:
    """The attention branches' init of the official codes: every ``weighted`` layer (ODConv's and
    DyConv's 1x1 convs; KernelWarehouse's linear layers) kaiming normal (fan_out, ReLU gain) with
    zero bias, every ``norms`` layer 1/0, in ``module.modules()`` order."""
    for m in module.modules():
        if isinstance(m, weighted):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, norms):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DynamicConvBase(nn.Module):
    """Common interface of ODConv2d, CondConv2d and DyConv2d.

    Attributes every subclass sets: ``in_planes``, ``out_planes``, ``kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``groups``, ``kernel_num``, ``weight`` (n, O, I/g, k, k),
    ``strategy`` (name of a :mod:`odconv.functional` strategy, default ``"auto"``).
    """

    in_planes: int
    out_planes: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    groups: int
    kernel_num: int
    _strategy: str = "auto"

    @property
    def strategy(self) -> str:
        """Execution strategy of :func:`odconv.functional.dynamic_conv2d` (``"auto"`` or a
        name in ``STRATEGIES``); setting an unknown name raises ValueError listing the valid ones."""
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self._strategy = check_strategy(name)

    def _init_conv(self, in_planes: int, out_planes: int, kernel_size: int, stride: int, padding: int,
                   dilation: int, groups: int, kernel_num: int, strategy: str) -> None:
        """Check and set the geometry, the kernel count and the strategy."""
        if in_planes % groups or out_planes % groups:
            raise ValueError(f"in_planes={in_planes} and out_planes={out_planes} must be divisible by groups={groups}")
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.groups, self.kernel_num = groups, kernel_num
        self.strategy = strategy

    def _create_kernels(self, fill: Callable[..., torch.Tensor] = torch.empty, bias: Optional[bool] = None) -> None:
        """``weight`` (n, O, I/g, k, k) made by ``fill`` (``torch.randn`` where the reference
        draws it, which moves the RNG), and with ``bias`` a ``bias`` (n, O) (True) or None
        (False); ``bias=None`` sets no ``bias`` attribute (ODConv). Then :meth:`reset_parameters`."""
        n, k = self.kernel_num, self.kernel_size
        self.weight = nn.Parameter(fill(n, self.out_planes, self.in_planes // self.groups, k, k))
        if bias is not None:
            self.bias = nn.Parameter(torch.empty(n, self.out_planes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each kernel on its own with the static conv rule of the official code (kaiming
        normal, fan_out, ReLU gain); biases zero."""
        for i in range(self.kernel_num):
            nn.init.kaiming_normal_(self.weight[i], mode="fan_out", nonlinearity="relu")
        bias = getattr(self, "bias", None)
        if bias is not None:
            nn.init.zeros_(bias)

    def update_temperature(self, temperature: float) -> None:
        """Set the temperature of the layer's ``attention`` when it has one; layers without a
        temperature (CondConv, ODConv with no attention) ignore it."""
        attention = getattr(self, "attention", None)
        if isinstance(attention, TemperatureBuffer):
            attention.update_temperature(temperature)

    def _attention_fc_macs(self) -> Optional[int]:
        """MACs of the attention branch's FC layers per example; None: no attention branch."""
        raise NotImplementedError

    def _attention_macs(self, in_hw: tuple[int, int]) -> int:
        """Global average pooling of the input (one MAC per element) plus the FC layers."""
        fc = self._attention_fc_macs()
        return 0 if fc is None else self.in_planes * in_hw[0] * in_hw[1] + fc

    def _modulation_macs(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
        return 0

    def _aggregation_macs(self) -> int:
        """Mixing the n kernels (and biases) into the example's kernel."""
        bias = getattr(self, "bias", None)
        return self.kernel_num * self.weight[0].numel() + (self.kernel_num * self.out_planes if bias is not None else 0)

    def mac_breakdown(self, in_hw: tuple[int, int]) -> dict[str, int]:
        """Multiply-accumulates per example, by part (see docs/models.md, "Cost counting"):

        - ``conv``: the convolution itself with the example's kernel (same as a static conv);
        - ``aggregation``: building the example's kernel from the n kernels and the spatial
          attention (the reference algorithm's cost; other strategies move this work around);
        - ``attention``: global average pooling and the attention branch's FC layers;
        - ``modulation``: multiplying channel attention into the input and filter attention
          into the output.
        """
        out_hw = conv_output_hw(in_hw, self.kernel_size, self.stride, self.padding, self.dilation)
        conv = self.out_planes * (self.in_planes // self.groups) * self.kernel_size ** 2 * out_hw[0] * out_hw[1]
        return {
            "conv": conv,
            "aggregation": self._aggregation_macs(),
            "attention": self._attention_macs(in_hw),
            "modulation": self._modulation_macs(in_hw, out_hw),
        }

    def macs(self, in_hw: tuple[int, int]) -> int:
        """Total multiply-accumulates per example for an input of spatial size ``in_hw``."""
        return sum(self.mac_breakdown(in_hw).values())

    def _repr_fields(self) -> list[tuple[str, Any]]:
        """The ``extra_repr`` fields after ``in, out, kernel_size, stride, padding``."""
        return [("groups", self.groups), ("kernel_num", self.kernel_num), ("strategy", self.strategy)]

    def extra_repr(self) -> str:
        head = (f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        return ", ".join([head, *(f"{k}={v}" for k, v in self._repr_fields())])
