"""The context of a model build, for conv families whose layers depend on where they sit or
share parameters across the model (KernelWarehouse): :func:`model_build` (entered by
:func:`odconv.build_model` around the model's builder: the family's ``begin_model`` /
``end_model`` hooks and its state, :func:`current_model_build`) and :class:`ConvSite` (the hint a
model builder gives about each conv it builds, :func:`current_conv_site`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Optional

from .families import ConvFamily, get_conv_family
from .spec import ConvSpec


@dataclass(frozen=True)
class ConvSite:
    """Where in a model a conv is built: the hint a model builder gives the family of each
    conv it builds through :meth:`odconv.models.ModelPlan.conv` (:func:`current_conv_site`
    while the family's :meth:`ConvFamily.build` runs). Families that need no such hint ignore it;
    KernelWarehouse names its warehouses from it.

    Fields: ``model_family`` (``"resnet"``, ``"mobilenetv2"``); ``role`` (``"block"``, a conv of a
    residual block; ``"downsample"``, the shortcut of a stage's first block; ``"stem"``;
    ``"head"``, MobileNetV2's last 1x1); ``stage`` (ResNet: 0 for ``layer1`` ... 3; MobileNetV2:
    the row of its inverted-residual setting, 0..6); ``block`` (the block's index in its stage);
    ``position`` (the conv's index in its block: ResNet ``conv1`` 0, ``conv2`` 1, ``conv3`` 2;
    MobileNetV2 expansion 0, depthwise 1, projection 2, also when there is no expansion);
    ``stage_blocks`` (the model's blocks per stage); ``block_type`` (``"basic"``,
    ``"bottleneck"``, ``"inverted_residual"``).
    """

    model_family: str
    role: str = "block"
    stage: int = 0
    block: int = 0
    position: int = 0
    stage_blocks: tuple[int, ...] = ()
    block_type: str = ""

    def at(self, position: int) -> "ConvSite":
        """The same block's conv at ``position``."""
        return replace(self, position=position)

    @property
    def name(self) -> str:
        """A readable path, e.g. ``resnet.stage1.block0.conv1`` or ``mobilenetv2.head``."""
        if self.role in ("stem", "head"):
            return f"{self.model_family}.{self.role}"
        conv = "downsample" if self.role == "downsample" else f"conv{self.position}"
        return f"{self.model_family}.stage{self.stage}.block{self.block}.{conv}"


@dataclass
class ModelBuild:
    """The model build under way (:func:`current_model_build`): its spec's family and the
    ``state`` that the family's :meth:`ConvFamily.begin_model` returned."""

    family: ConvFamily
    spec: ConvSpec
    state: Any = None


_BUILD: contextvars.ContextVar[Optional[ModelBuild]] = contextvars.ContextVar("odconv_model_build", default=None)
_SITE: contextvars.ContextVar[Optional[ConvSite]] = contextvars.ContextVar("odconv_conv_site", default=None)


def current_conv_site() -> Optional[ConvSite]:
    """The :class:`ConvSite` of the conv being built, or None (no hint given)."""
    return _SITE.get()


@contextmanager
def conv_site(site: Optional[ConvSite]) -> Iterator[Optional[ConvSite]]:
    """Make ``site`` the current conv site while the body builds one conv."""
    token = _SITE.set(site)
    try:
        yield site
    finally:
        _SITE.reset(token)


def current_model_build() -> Optional[ModelBuild]:
    """The model build ``build_model`` is running, or None (a bare ``make_conv``)."""
    return _BUILD.get()


@contextmanager
def model_build(spec: ConvSpec, conv_options: dict[str, Any]) -> Iterator[ModelBuild]:
    """Run the family's :meth:`~ConvFamily.begin_model` hook, make the build current while the
    body builds the model; the caller then calls :meth:`~ConvFamily.end_model`."""
    family = get_conv_family(spec.kind)
    build = ModelBuild(family, spec)
    build.state = family.begin_model(spec, dict(conv_options))
    token = _BUILD.set(build)
    try:
        yield build
    finally:
        _BUILD.reset(token)


__all__ = ["ModelBuild", "ConvSite", "model_build", "current_model_build", "conv_site", "current_conv_site"]
