"""The conv spec grammar: one short string names a conv variant everywhere.

Grammar (see docs/layers.md, "Conv specs")::

    static
    odconv<n>x                       all four attentions, n kernels
    odconv<n>x-<a>+<b>...            the named attentions only (channel, filter, spatial, kernel)
    condconv<n>x                     CondConv with n experts
    dyconv<n>x                       DyConv with n kernels

A spec parses into a frozen :class:`ConvSpec` whose ``str()`` is the canonical spelling
(attentions always printed in the order channel, filter, spatial, kernel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTENTIONS: tuple[str, ...] = ("channel", "filter", "spatial", "kernel")
KINDS: tuple[str, ...] = ("static", "odconv", "condconv", "dyconv")

_EXAMPLES = "static, odconv1x, odconv4x, odconv1x-channel+spatial, odconv4x-filter+kernel, condconv8x, dyconv4x"
_DYNAMIC_RE = re.compile(r"^(odconv|condconv|dyconv)(\d+)x(?:-(.+))?$")


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


@dataclass(frozen=True)
class ConvSpec:
    """A parsed conv spec. ``attentions`` is only meaningful for ``kind == "odconv"``."""

    kind: str
    num: int = 1
    attentions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown conv kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.kind == "static":
            if self.num != 1 or self.attentions:
                raise ValueError("a static conv takes no kernel count and no attentions")
            return
        if self.num < 1:
            raise ValueError(f"kernel count must be >= 1 in a {self.kind} spec, got {self.num}")
        if self.kind == "odconv":
            object.__setattr__(self, "attentions", validate_attentions(self.attentions, self.num))
        elif self.attentions:
            raise ValueError(f"{self.kind} takes no attention list (only odconv does)")

    @property
    def is_dynamic(self) -> bool:
        return self.kind != "static"

    def __str__(self) -> str:
        if self.kind == "static":
            return "static"
        base = f"{self.kind}{self.num}x"
        if self.kind == "odconv" and self.attentions != self.full_attentions(self.num):
            base += "-" + "+".join(a for a in ATTENTIONS if a in self.attentions)
        return base

    @staticmethod
    def full_attentions(num: int) -> frozenset[str]:
        """All attentions that an ``odconv<num>x`` spec switches on."""
        return frozenset(ATTENTIONS) if num >= 2 else frozenset(ATTENTIONS[:3])


def parse_conv_spec(spec: str | ConvSpec) -> ConvSpec:
    """Parse a spec string (or pass a :class:`ConvSpec` through). Raises ``ValueError``
    naming the bad spec and the valid grammar."""
    if isinstance(spec, ConvSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"conv spec must be a string, got {type(spec).__name__} {spec!r}; valid: {_EXAMPLES}")
    text = spec.strip().lower()
    if text == "static":
        return ConvSpec("static")
    m = _DYNAMIC_RE.match(text)
    if not m:
        raise ValueError(f"bad conv spec {spec!r}; valid: {_EXAMPLES} "
                         f"(grammar: static | odconv<n>x[-<att>+<att>...] | condconv<n>x | dyconv<n>x; "
                         f"attentions: {', '.join(ATTENTIONS)})")
    kind, num, atts = m.group(1), int(m.group(2)), m.group(3)
    try:
        if kind != "odconv":
            if atts is not None:
                raise ValueError(f"{kind} takes no attention list (only odconv does)")
            return ConvSpec(kind, num)
        if atts is None:
            return ConvSpec(kind, num, ConvSpec.full_attentions(num))
        names = atts.split("+")
        if len(set(names)) != len(names):
            raise ValueError(f"attention named twice in {atts!r}")
        return ConvSpec(kind, num, frozenset(names))
    except ValueError as err:
        raise ValueError(f"bad conv spec {spec!r}: {err}; valid examples: {_EXAMPLES}") from None
