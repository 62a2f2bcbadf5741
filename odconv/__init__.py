"""odconv: ODConv2d, the CondConv and DyConv baselines, a conv-family registry and one conv
factory, model builders and cost counting. Pure PyTorch."""

from .autotune import choose_strategy, set_auto_mode, use_strategy
from .factory import make_conv
from .families import (
    ConvFamily,
    ConvFamilyError,
    PlacementDefaults,
    TemperatureSchedule,
    conv_families,
    get_conv_family,
    register_conv_family,
    unregister_conv_family,
)
from .functional import STRATEGIES, dynamic_conv2d, per_example_kernels
from .layers import CondConv2d, DyConv2d, DynamicConvBase, ODConv2d
from .model_state import dynamic_layers, load_checkpoint, set_strategy, set_temperature, strip_prefix
from .ops.registry import EXPORTABLE_STRATEGIES, valid_strategies
from .spec import ATTENTIONS, ConvSpec, parse_conv_spec

__all__ = [
    "ATTENTIONS", "ConvSpec", "parse_conv_spec", "make_conv", "dynamic_conv2d", "per_example_kernels",
    "STRATEGIES", "ODConv2d", "CondConv2d", "DyConv2d", "DynamicConvBase", "dynamic_layers",
    "set_temperature", "load_checkpoint", "strip_prefix", "use_strategy", "set_strategy", "choose_strategy",
    "set_auto_mode", "EXPORTABLE_STRATEGIES", "valid_strategies", "ConvFamily", "ConvFamilyError",
    "PlacementDefaults", "TemperatureSchedule", "conv_families", "get_conv_family", "register_conv_family",
    "unregister_conv_family",
]

from .counting import count_macs, count_params, profile_model  # noqa: E402
from .models import build_model, list_models, register_model  # noqa: E402

__all__ += ["build_model", "list_models", "register_model", "count_macs", "count_params", "profile_model"]
