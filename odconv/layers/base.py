"""What every dynamic conv layer shares: temperature handling and cost accounting."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.primitives import conv_output_hw
from ..ops.registry import check_strategy


class TemperatureBuffer(nn.Module):
    """Mixin for modules holding a ``temperature`` buffer that divides attention logits.

    The temperature is a registered buffer updated in place: it is saved in checkpoints and a
    change does not make ``torch.compile`` recompile (a Python float would). State dicts
    written without it (e.g. by the reference ODConv, whose temperature is a float) still
    load with ``strict=True``; the module then keeps its current temperature.
    """

    temperature: torch.Tensor

    def _init_temperature(self, value: float = 1.0) -> None:
        self.register_buffer("temperature", torch.tensor(float(value)))

    def update_temperature(self, temperature: float) -> None:
        """Set the softmax/sigmoid temperature (all attention logits are divided by it)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "temperature"
        if key in missing_keys:
            missing_keys.remove(key)


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

    def update_temperature(self, temperature: float) -> None:  # pragma: no cover - overridden where used
        """Layers without a temperature ignore it."""

    def _attention_macs(self, in_hw: tuple[int, int]) -> int:
        raise NotImplementedError

    def _modulation_macs(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
        return 0

    def _aggregation_macs(self) -> int:
        return 0

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
