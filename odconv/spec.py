"""The conv spec grammar: one short string names a conv variant everywhere.

Built-in grammar (see docs/layers.md, "Conv specs")::

    static
    odconv<n>x                       all four attentions, n kernels
    odconv<n>x-<a>+<b>...            the named attentions only (channel, filter, spatial, kernel)
    condconv<n>x                     CondConv with n experts
    dyconv<n>x                       DyConv with n kernels

Each part of the grammar belongs to a conv family (:mod:`odconv.families`): a registered
family adds its own (``toyconv<n>x``...). A spec parses into a frozen :class:`ConvSpec` whose
``str()`` is the canonical spelling (attentions always printed in the order channel, filter,
spatial, kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ATTENTIONS: tuple[str, ...] = ("channel", "filter", "spatial", "kernel")


def validate_attentions(attentions: frozenset[str] | set[str] | tuple[str, ...] | list[str],
                        kernel_num: int) -> frozenset[str]:
    """Check an ODConv attention subset against its kernel count; returns it as a frozenset.

    ``kernel`` attention needs ``kernel_num >= 2`` and ``kernel_num >= 2`` needs ``kernel``
    attention: extra kernels mixed with no attention are one kernel in disguise.
    """
    if isinstance(attentions, str):
        raise ValueError(f"attentions must be a collection of names, got the string {attentions!r}; "
                         f"e.g. {{'channel', 'spatial'}}; valid names: {', '.join(ATTENTIONS)}")
    atts = frozenset(attentions)
    unknown = sorted(atts - set(ATTENTIONS))
    if unknown:
        raise ValueError(f"unknown attention(s) {unknown}; valid: {', '.join(ATTENTIONS)}")
    if kernel_num < 1:
        raise ValueError(f"kernel_num must be >= 1, got {kernel_num}")
    if "kernel" in atts and kernel_num < 2:
        raise ValueError(f"'kernel' attention needs kernel_num >= 2, got kernel_num={kernel_num} "
                         f"(drop 'kernel' or use e.g. odconv4x)")
    if kernel_num >= 2 and "kernel" not in atts:
        raise ValueError(f"kernel_num={kernel_num} needs 'kernel' attention: {kernel_num} kernels mixed "
                         f"without attention are one kernel in disguise (add '+kernel' or use odconv1x)")
    return atts


def _family(kind: str):
    from .families import get_conv_family  # the registry imports this module
    return get_conv_family(kind)


@dataclass(frozen=True)
class ConvSpec:
    """A parsed conv spec: the family (``kind``), its count ``num`` (kernels, experts...),
    ``attentions`` (ODConv only) and ``settings`` (``(name, value)`` pairs, for a registered
    family whose identity needs more than a count). The family checks the fields
    (:meth:`odconv.families.ConvFamily.check`) and writes the canonical spelling."""

    kind: str
    num: int = 1
    attentions: frozenset[str] = frozenset()
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _family(self.kind).check(self)

    @property
    def family(self):
        """The :class:`odconv.families.ConvFamily` of this spec."""
        return _family(self.kind)

    @property
    def is_dynamic(self) -> bool:
        return bool(self.family.dynamic)

    def setting(self, name: str, default: Any = None) -> Any:
        """The value of setting ``name`` (``default`` when the spec has none)."""
        return dict(self.settings).get(name, default)

    def __str__(self) -> str:
        return self.family.format(self)

    @staticmethod
    def full_attentions(num: int) -> frozenset[str]:
        """All attentions that an ``odconv<num>x`` spec switches on."""
        return frozenset(ATTENTIONS) if num >= 2 else frozenset(ATTENTIONS[:3])


def parse_conv_spec(spec: str | ConvSpec) -> ConvSpec:
    """Parse a spec string (or pass a :class:`ConvSpec` through): the first registered family
    whose grammar claims the text parses it. Raises ``ValueError`` naming the bad spec and the
    valid grammar (that of every registered family)."""
    from .families import grammar_help, parse_with_families  # deferred: the registry imports this module
    if isinstance(spec, ConvSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"conv spec must be a string, got {type(spec).__name__} {spec!r}; "
                         f"valid: {grammar_help()[0]}")
    text = spec.strip().lower()
    try:
        parsed = parse_with_families(text)
    except ValueError as err:
        raise ValueError(f"bad conv spec {spec!r}: {err}; valid examples: {grammar_help()[0]}") from None
    if parsed is None:
        examples, grammar = grammar_help()
        raise ValueError(f"bad conv spec {spec!r}; valid: {examples} (grammar: {grammar})")
    return parsed
