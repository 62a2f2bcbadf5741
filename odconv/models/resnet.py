"""ResNets whose block convs come from the conv factory.

The layout follows ``torchvision.models.resnet`` (and the official ODConv ``od_resnet.py``,
whose parameter names it shares): ``conv1``/``bn1`` stem, ``layer1..layer4`` of
:class:`BasicBlock` or :class:`Bottleneck`, ``fc``. ResNet-50 is v1.5 (stride on the 3x3).
Which convs are dynamic is decided by the :class:`~odconv.models.placement.ModelPlan`.

- ImageNet layout (``resnet18``, ``resnet50``): 7x7 stride-2 stem + 3x3 max-pool.
- Small-image layout (``cifar_resnet18``): 3x3 stride-1 stem, no max-pool, so that 32x32
  inputs end at 4x4 (64x64 at 8x8); ``width`` scales every stage's channels (64, 128, 256,
  512 at width 1).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Type, Union

from torch import Tensor, nn

from ..model_build import ConvSite
from ..spec import ConvSpec
from .placement import ModelPlan, SharedRouter, call_conv, check_model_options, init_static, make_classifier, plan_model
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``router`` (CondConv paper placement) routes both.
    ``site``: the block's place in the model (its convs get ``site.at(0)``, ``site.at(1)``)."""

    expansion = 1

    def __init__(self, plan: ModelPlan, spec: ConvSpec, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, site: Optional[ConvSite] = None) -> None:
        super().__init__()
        self.router: Optional[SharedRouter] = plan.router(spec, inplanes)
        shared = self.router is not None
        at = (lambda i: site.at(i)) if site is not None else (lambda i: None)
        self.conv1 = plan.conv(spec, inplanes, planes, 3, stride=stride, shared_routing=shared, site=at(0))
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = plan.conv(spec, planes, planes, 3, shared_routing=shared, site=at(1))
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        r = self.router(x) if self.router is not None else None
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(call_conv(self.conv1, x, r)))
        out = self.bn2(call_conv(self.conv2, out, r))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1 x4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, plan: ModelPlan, spec: ConvSpec, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, site: Optional[ConvSite] = None) -> None:
        super().__init__()
        self.router: Optional[SharedRouter] = plan.router(spec, inplanes)
        shared = self.router is not None
        at = (lambda i: site.at(i)) if site is not None else (lambda i: None)
        self.conv1 = plan.conv(spec, inplanes, planes, 1, shared_routing=shared, site=at(0))
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = plan.conv(spec, planes, planes, 3, stride=stride, shared_routing=shared, site=at(1))
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = plan.conv(spec, planes, planes * self.expansion, 1, shared_routing=shared, site=at(2))
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        r = self.router(x) if self.router is not None else None
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(call_conv(self.conv1, x, r)))
        out = self.relu(self.bn2(call_conv(self.conv2, out, r)))
        out = self.bn3(call_conv(self.conv3, out, r))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """ResNet with factory-built convs.

    Args:
        block, layers: block type and blocks per stage (``[2, 2, 2, 2]`` for ResNet-18).
        conv, placement, conv_options: see :func:`odconv.build_model`.
        small_input: 3x3 stride-1 stem without max-pool (32x32/64x64 images).
        width: channel multiplier of every stage (stem included).
        in_chans, dropout: input channels; dropout before the classifier.

    Input (B, in_chans, H, W) -> logits (B, num_classes).
    """

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000, conv: str = "static",
                 placement: str = "matched", conv_options: Optional[dict] = None, small_input: bool = False,
                 width: float = 1.0, in_chans: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        check_model_options(width=width, dropout=dropout, in_chans=in_chans)
        self.plan = plan_model("resnet", sum(layers), conv, placement, conv_options)
        self.num_classes = num_classes
        widths = [max(int(round(c * width)), 1) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.site = ConvSite("resnet", stage_blocks=tuple(layers),
                             block_type="basic" if block is BasicBlock else "bottleneck")
        stem_k, stem_stride = (3, 1) if small_input else (7, 2)
        if self.plan.stem.is_dynamic:
            self.conv1 = self.plan.conv(self.plan.stem, in_chans, widths[0], stem_k, stride=stem_stride,
                                        padding=stem_k // 2, site=replace(self.site, role="stem"))
        else:
            self.conv1 = nn.Conv2d(in_chans, widths[0], stem_k, stride=stem_stride, padding=stem_k // 2, bias=False)
        self.maxpool: nn.Module = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        specs = iter(self.plan.blocks)
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, specs, stage=0)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, specs, stage=1)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, specs, stage=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, specs, stage=3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3] * block.expansion
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = make_classifier(self.plan, self.num_features, num_classes)
        init_static(self)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, specs,
                    stage: int = 0) -> nn.Sequential:
        site = replace(self.site, stage=stage)
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                self.plan.conv(self.plan.downsample, self.inplanes, planes * block.expansion, 1, stride=stride,
                               site=replace(site, role="downsample")),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.plan, next(specs), self.inplanes, planes, stride, downsample, site=site)]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.plan, next(specs), self.inplanes, planes, site=replace(site, block=i)))
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> pooled features (B, num_features)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


@register_model
def resnet18(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
             in_chans: int = 3, dropout: float = 0.0) -> ResNet:
    """ResNet-18, ImageNet layout (224x224)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, conv, placement, conv_options, in_chans=in_chans,
                  dropout=dropout)


@register_model
def resnet50(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
             in_chans: int = 3, dropout: float = 0.0) -> ResNet:
    """ResNet-50 v1.5 (stride on the 3x3 conv), ImageNet layout (224x224)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, conv, placement, conv_options, in_chans=in_chans,
                  dropout=dropout)


@register_model
def cifar_resnet18(*, num_classes: int, conv: str = "static", placement: str = "matched", conv_options=None,
                   width: float = 1.0, in_chans: int = 3, dropout: float = 0.0) -> ResNet:
    """ResNet-18 for 32x32/64x64 images: 3x3 stride-1 stem, no max-pool, channels x ``width``."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, conv, placement, conv_options, small_input=True,
                  width=width, in_chans=in_chans, dropout=dropout)
