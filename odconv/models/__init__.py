"""Model builders: ``build_model(name, num_classes=..., conv=..., placement=...)``.

Registered models: ``resnet18``, ``resnet50`` (v1.5), ``mobilenetv2_100``, ``mobilenetv2_075``,
``mobilenetv2_050`` (ImageNet layout, as the official ODConv repo) and ``cifar_resnet18``,
``cifar_mobilenetv2`` (32x32/64x64 inputs, with a ``width`` multiplier).
"""

from . import mobilenetv2, resnet  # noqa: F401  (register the builders)
from .mobilenetv2 import MobileNetV2
from .placement import PLACEMENTS, DynamicLinear, ModelPlan, SharedRouter, plan_model
from .registry import build_model, list_models, model_options, register_model
from .resnet import ResNet

__all__ = ["build_model", "list_models", "model_options", "register_model", "PLACEMENTS", "ModelPlan",
           "plan_model", "SharedRouter", "DynamicLinear", "ResNet", "MobileNetV2"]
