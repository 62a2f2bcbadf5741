"""Argument types of the training layer that the command line checks while parsing.

``lightning fit --model.conv odconv4x-channel`` then ends in the parser's usual one-line
``error:`` naming the argument, the value and what is valid (exit code 2), not in a
traceback from inside the model's constructor.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse.typing import register_type

import odconv
from odconv.models import list_models
from odconv.models.placement import PLACEMENTS


class ConvSpecName(str):
    """A conv spec string (``static``, ``odconv4x``, ``odconv1x-channel+spatial``,
    ``condconv8x``...) that :func:`odconv.parse_conv_spec` accepts; constructing one from a
    bad spec raises its ``ValueError`` (naming the spec and the grammar)."""

    def __new__(cls, value: str) -> ConvSpecName:
        odconv.parse_conv_spec(value)
        return super().__new__(cls, value)


register_type(ConvSpecName, serializer=str, deserializer=ConvSpecName)

#: The names in ``odconv.list_models()`` when this module is imported.
ModelName = Literal[tuple(list_models())]  # type: ignore[valid-type]
#: Where the dynamic convs go (``odconv.models.placement.PLACEMENTS``).
Placement = Literal[PLACEMENTS]  # type: ignore[valid-type]
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["cosine", "step", "constant"]

__all__ = ["ConvSpecName", "ModelName", "Placement", "OptimizerName", "ScheduleName"]
