from .base import DynamicConvBase, TemperatureBuffer
from .condconv import CondConv2d
from .dyconv import DyConv2d, KernelAttention
from .odconv import ODConv2d, OmniAttention

__all__ = ["DynamicConvBase", "TemperatureBuffer", "ODConv2d", "OmniAttention", "CondConv2d", "DyConv2d",
           "KernelAttention"]
