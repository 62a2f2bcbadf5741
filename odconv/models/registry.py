"""Model registry in the timm style: ``@register_model``, ``list_models()``, ``build_model()``.

A registered builder is a function ``builder(*, num_classes, conv, placement, conv_options,
**model_options) -> nn.Module``. :func:`build_model` checks the name, the conv spec, the
placement and the options before calling it, so that every mistake is a ``ValueError``
that says what is valid.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable

from torch import nn

from ..families import conv_families, get_conv_family
from ..model_build import model_build
from ..spec import parse_conv_spec
from .placement import PLACEMENTS, check_placement

_MODELS: dict[str, Callable[..., nn.Module]] = {}



def conv_option_names() -> frozenset[str]:
    """Options of make_conv a user may set through build_model: those of every registered
    family but the internal ones (CondConv's ``routing``: models use it for a router shared by
    a block's convs)."""
    return frozenset().union(*(f.model_options for f in conv_families().values()))


def __getattr__(name: str):
    if name == "CONV_OPTION_NAMES":   # computed on use: families may be registered at any time
        return conv_option_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Arguments every builder receives from build_model itself.
_RESERVED = ("num_classes", "conv", "placement", "conv_options")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its ``__name__``. Its keyword arguments beyond
    ``num_classes, conv, placement, conv_options`` are the model's own options."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    params = inspect.signature(fn).parameters
    missing = [a for a in _RESERVED if a not in params]
    if missing:
        raise TypeError(f"model builder {name!r} must accept the keyword arguments {missing}")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names (sorted), optionally filtered by a shell-style ``pattern``
    (``list_models("cifar_*")``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_options(name: str) -> dict[str, Any]:
    """The model options of ``name`` (beyond the conv options) with their defaults."""
    fn = _get(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if k not in _RESERVED and p.kind is p.KEYWORD_ONLY}


def _get(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}") from None


def build_model(name: str, *, num_classes: int, conv: str = "static", placement: str = "matched",
                **options: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs.

    Args:
        conv: a conv spec (``static``, ``odconv4x``, ``condconv8x``... see :mod:`odconv.spec`).
        placement: ``"matched"`` (the default: the spec goes where the official ODConv repo
            puts ODConv, for controlled ablations) or ``"paper"`` (each baseline as its own
            authors placed it); see :mod:`odconv.models.placement`.
        options: conv options (``reduction``, ``min_channel``, ``strategy``: passed to every
            dynamic conv of the model; each must apply to the spec's kind, ``None`` means
            "the layer's default") and model options (see :func:`model_options`, e.g.
            ``dropout``, ``in_chans``, ``width`` for the small-image models).

    The spec's conv family's ``begin_model`` / ``end_model`` hooks run before and after the
    model's layers are built (:mod:`odconv.families`).

    Raises ``ValueError`` for an unknown model, a bad spec, a bad placement, or an option
    that the model or the spec's kind does not take.
    """
    fn = _get(name)
    spec = parse_conv_spec(conv)
    check_placement(placement)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    own = model_options(name)
    names = conv_option_names()
    conv_options = {k: v for k, v in options.items() if k in names and k not in own}
    unknown = sorted(set(options) - set(own) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; model options: {sorted(own)}; "
                         f"conv options: {sorted(names)}")
    given = {k: v for k, v in conv_options.items() if v is not None}
    family = get_conv_family(spec.kind)
    wrong = sorted(set(given) - family.model_options)
    if wrong:
        raise ValueError(f"conv option(s) {wrong} do not apply to {spec.kind} convs (conv={str(spec)!r}); "
                         f"valid for {spec.kind}: {sorted(family.model_options) or 'none'}")
    model_kwargs = {k: v for k, v in options.items() if k in own}
    with model_build(spec, given) as build:   # the family's hooks around the model's layers
        model = fn(num_classes=num_classes, conv=str(spec), placement=placement, conv_options=given, **model_kwargs)
    family.end_model(model, build.state)
    return model


__all__ = ["register_model", "list_models", "build_model", "model_options", "conv_option_names", "PLACEMENTS"]
