"""MobileNetV2 whose convs come from the conv factory.

The layout and parameter names follow ``torchvision.models.mobilenet_v2`` and the official
ODConv ``od_mobilenetv2.py``: ``features.0`` is the stem (3x3 stride 2, always static),
``features.1..17`` the inverted-residual blocks (``.conv`` = expansion 1x1, depthwise 3x3,
projection 1x1 + BN), ``features.18`` the last 1x1 conv to 1280 channels, then
``classifier`` = Dropout + Linear. Channels are ``_make_divisible(c * width, 8)``; the last
conv has ``1280 * max(1, width)`` channels (1280 for every width <= 1), as in the paper.

Small-image layout (``cifar_mobilenetv2``), the usual CIFAR adaptation (as in e.g.
kuangliu/pytorch-cifar): the stem has stride 1 and the first 24-channel stage stride 1
instead of 2, so the network downsamples 8x instead of 32x (32x32 inputs end at 4x4, 64x64 at
8x8); everything else is the ImageNet model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from torch import Tensor, nn

from ..model_build import ConvSite
from ..spec import ConvSpec
from .placement import ModelPlan, SharedRouter, call_conv, check_model_options, init_static, make_classifier, plan_model
from .registry import register_model

# t (expansion), c (channels), n (blocks), s (stride of the first block)
IMAGENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))
CIFAR_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``v`` to a multiple of ``divisor``, never below 90% of ``v`` (torchvision's rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> ReLU6 (names ``0``, ``1``, ``2`` as torchvision's ``Conv2dNormActivation``)."""

    def __init__(self, conv: nn.Module, out_channels: int) -> None:
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))

    def forward(self, x: Tensor, routing: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        return self[2](self[1](call_conv(self[0], x, routing)))


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1) -> 3x3 depthwise (stride) -> 1x1 projection, with a
    residual connection when stride is 1 and channels match. ``router`` (CondConv paper
    placement) routes all three convs from the block input. ``site``: the block's place in the
    model (expansion, depthwise, projection at positions 0, 1, 2)."""

    def __init__(self, plan: ModelPlan, spec: ConvSpec, inp: int, oup: int, stride: int, expand_ratio: int,
                 site: Optional[ConvSite] = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        self.router: Optional[SharedRouter] = plan.router(spec, inp)
        shared = self.router is not None
        at = (lambda i: site.at(i)) if site is not None else (lambda i: None)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(plan.conv(spec, inp, hidden, 1, shared_routing=shared, site=at(0)), hidden))
        layers += [
            ConvBNAct(plan.conv(spec, hidden, hidden, 3, stride=stride, groups=hidden, shared_routing=shared,
                                site=at(1)), hidden),
            plan.conv(spec, hidden, oup, 1, shared_routing=shared, site=at(2)),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        r = self.router(x) if self.router is not None else None
        out = x
        for layer in self.conv:
            if isinstance(layer, nn.BatchNorm2d):
                out = layer(out)
            elif isinstance(layer, ConvBNAct):
                out = layer(out, r)
            else:  # the projection conv
                out = call_conv(layer, out, r)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with factory-built convs.

    Args:
        width: channel multiplier (1.0, 0.75, 0.5 for the ImageNet models).
        conv, placement, conv_options: see :func:`odconv.build_model`.
        small_input: the CIFAR adaptation (stem stride 1, first 24-channel stage stride 1).
        dropout: before the classifier (0.2 as torchvision and the official repo).
        in_chans: input channels.

    Input (B, in_chans, H, W) -> logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, conv: str = "static",
                 placement: str = "matched", conv_options: Optional[dict] = None, small_input: bool = False,
                 dropout: float = 0.2, in_chans: int = 3, round_nearest: int = 8) -> None:
        super().__init__()
        check_model_options(width=width, dropout=dropout, in_chans=in_chans)
        setting = CIFAR_SETTING if small_input else IMAGENET_SETTING
        self.plan = plan_model("mobilenetv2", sum(n for _, _, n, _ in setting), conv, placement, conv_options)
        self.num_classes = num_classes
        input_channel = _make_divisible(32 * width, round_nearest)
        self.num_features = _make_divisible(1280 * max(1.0, width), round_nearest)
        site = ConvSite("mobilenetv2", stage_blocks=tuple(n for _, _, n, _ in setting),
                        block_type="inverted_residual")
        stem_stride = 1 if small_input else 2
        if self.plan.stem.is_dynamic:
            stem = self.plan.conv(self.plan.stem, in_chans, input_channel, 3, stride=stem_stride, padding=1,
                                  site=replace(site, role="stem"))
        else:
            stem = nn.Conv2d(in_chans, input_channel, 3, stride=stem_stride, padding=1, bias=False)
        features: list[nn.Module] = [ConvBNAct(stem, input_channel)]
        specs = iter(self.plan.blocks)
        for stage, (t, c, n, s) in enumerate(setting):
            output_channel = _make_divisible(c * width, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(self.plan, next(specs), input_channel, output_channel,
                                                 s if i == 0 else 1, t, site=replace(site, stage=stage, block=i)))
                input_channel = output_channel
        features.append(ConvBNAct(self.plan.conv(self.plan.head, input_channel, self.num_features, 1,
                                                 site=replace(site, role="head", stage=len(setting))),
                                  self.num_features))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), make_classifier(self.plan, self.num_features,
                                                                              num_classes))
        init_static(self)
        for m in self.classifier.modules():  # torchvision / official repo: N(0, 0.01) classifier
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> pooled features (B, num_features)."""
        return self.avgpool(self.features(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _mbv2(width: float, num_classes: int, conv: str, placement: str, conv_options, in_chans: int,
          dropout: float, small_input: bool = False) -> MobileNetV2:
    return MobileNetV2(num_classes, width, conv, placement, conv_options, small_input=small_input, dropout=dropout,
                       in_chans=in_chans)


@register_model
def mobilenetv2_100(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
                    in_chans: int = 3, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 1.0, ImageNet layout (224x224)."""
    return _mbv2(1.0, num_classes, conv, placement, conv_options, in_chans, dropout)


@register_model
def mobilenetv2_075(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
                    in_chans: int = 3, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 0.75, ImageNet layout (224x224)."""
    return _mbv2(0.75, num_classes, conv, placement, conv_options, in_chans, dropout)


@register_model
def mobilenetv2_050(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
                    in_chans: int = 3, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 0.5, ImageNet layout (224x224)."""
    return _mbv2(0.5, num_classes, conv, placement, conv_options, in_chans, dropout)


@register_model
def cifar_mobilenetv2(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
                      width: float = 1.0, in_chans: int = 3, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 for 32x32/64x64 images (stem and first 24-channel stage at stride 1),
    channels x ``width``."""
    return _mbv2(width, num_classes, conv, placement, conv_options, in_chans, dropout, small_input=True)
