"""The conv-family registry: every kind of conv a spec can name is one registered
:class:`ConvFamily`, which owns its part of the spec grammar, its options, its builder, its
cost counting, its temperature schedule and its placement defaults.

Built in: ``static``, ``odconv``, ``condconv``, ``dyconv``, ``kw`` (:mod:`odconv.builtin_families`).
Another family joins with the :func:`register_conv_family` decorator, or from an installed
package through the entry-point group ``odconv_bench.conv_families`` (loaded once, on the first
lookup the families already registered cannot answer: an unknown name or spec, or a listing).
It then works everywhere a spec works: :func:`odconv.make_conv`, :func:`odconv.build_model`,
``lightning fit --model.conv``, sweep grids and the cost counting. See docs/layers.md, "Add your
own conv family".
"""

from __future__ import annotations

import importlib.metadata
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from .layers.base import TemperatureBuffer
from .spec import ConvSpec

ENTRY_POINT_GROUP = "odconv_bench.conv_families"
_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9_]*[a-z_])?$")   # no trailing digit: "<name><n>x" stays unambiguous


class ConvFamilyError(ValueError):
    """A bad family registration (a name clash, a bad name or grammar, a broken entry point)."""


# --------------------------------------------------------------------------- schedule, placement

def linear_temperature(progress_epochs: float, init: float = 30.0, final: float = 1.0, epochs: float = 10.0) -> float:
    """The official ODConv schedule: ``init`` at epoch 0, linearly to ``final`` at ``epochs``
    (fractional epochs: it moves every step), ``final`` afterwards."""
    if epochs <= 0:
        return float(final)
    frac = min(max(progress_epochs / epochs, 0.0), 1.0)
    return float(final + (init - final) * (1.0 - frac))


def temperature_modules(model: nn.Module) -> list[TemperatureBuffer]:
    """Every module of ``model`` whose attention has a temperature buffer (ODConv, DyConv)."""
    return [m for m in model.modules() if isinstance(m, TemperatureBuffer)]


def _set_temperature(module: nn.Module, value: float) -> None:
    module.update_temperature(value)


@dataclass(frozen=True)
class TemperatureSchedule:
    """A family's training schedule: ``start`` at epoch 0, linearly to ``end`` at ``epochs``,
    then ``end``; applied before every training step to the modules ``targets(model)`` by
    ``setter(module, value)`` (default: ``module.update_temperature(value)``).

    ODConv and DyConv: 30 -> 1 over 10 epochs on their attentions' temperature buffers.
    KernelWarehouse: ``TemperatureSchedule(1.0, 0.0, epochs, targets=warehouse_layers)`` (the
    blend weight of the initial cell assignment).
    """

    start: float
    end: float
    epochs: float
    targets: Callable[[nn.Module], list] = temperature_modules
    setter: Callable[[nn.Module, float], None] = _set_temperature

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"temperature epochs must be >= 0, got {self.epochs}")

    def value(self, progress_epochs: float) -> float:
        return linear_temperature(progress_epochs, self.start, self.end, self.epochs)


@dataclass(frozen=True)
class PlacementDefaults:
    """Which convs of a model a spec replaces (:func:`odconv.models.placement.plan_model`).

    ``last_blocks``: only the last n residual blocks are dynamic (None: every block);
    ``downsample``: the ResNet 1x1 shortcut; ``head``: MobileNetV2's last 1x1 conv;
    ``classifier``: a dynamic 1x1 classifier; ``shared_router``: one router per block
    (:meth:`ConvFamily.shared_router`) shared by the block's convs; ``stem``: the model's first
    conv (MobileNetV2's 3x3, the ResNet 7x7 / 3x3; KernelWarehouse's MobileNetV2).
    """

    last_blocks: Optional[int] = None
    downsample: bool = False
    head: bool = False
    classifier: bool = False
    shared_router: bool = False
    stem: bool = False


# --------------------------------------------------------------------------- the family class

class ConvFamily:
    """One kind of conv. Subclass it, set the class attributes, implement :meth:`build` (and
    whatever else differs from the defaults), then register it.

    Class attributes:
        name: the spec prefix and the family's key (lower case; letters, digits, ``_``; not
            ending in a digit).
        title: the family's name in reports ("KernelWarehouse"; default: ``name``).
        grammar: how its specs read, for error messages (default ``<name><n>x``).
        grammar_notes: extra words for the error messages (ODConv: its attention names).
        examples: canonical specs of the family (at least one; checked at registration:
            each must parse back to itself through this family).
        options: keyword options its builder accepts beyond the geometry (``make_conv``).
        internal_options: those of ``options`` that models set, not users (``build_model``
            refuses them).
        layer_types: the module classes its builder returns: the cost counting counts them
            with :meth:`mac_breakdown`, and the models' static init leaves them alone.
        dynamic: False only for ``static``.
    """

    name: str = ""
    title: str = ""
    grammar: str = ""
    grammar_notes: str = ""
    examples: tuple[str, ...] = ()
    options: frozenset[str] = frozenset()
    internal_options: frozenset[str] = frozenset()
    layer_types: tuple[type, ...] = ()
    dynamic: bool = True

    # -- grammar ---------------------------------------------------------------------------
    def pattern(self) -> re.Pattern:
        return re.compile(rf"^{re.escape(self.name)}(\d+)x(?:-(.+))?$")

    def parse(self, text: str) -> Optional[ConvSpec]:
        """``text`` (stripped, lower case) -> its :class:`ConvSpec`; None when the text is not
        of this family; ``ValueError`` (the reason) when it is, but wrong. Default grammar:
        ``<name><n>x``."""
        m = self.pattern().match(text)
        if not m:
            return None
        if m.group(2) is not None:
            raise ValueError(f"{self.name} takes no attention list (only odconv does)")
        return ConvSpec(self.name, int(m.group(1)))

    def check(self, spec: ConvSpec) -> None:
        """Raise ``ValueError`` when the fields of ``spec`` are not a valid spec of this family."""
        if spec.num < 1:
            raise ValueError(f"kernel count must be >= 1 in a {self.name} spec, got {spec.num}")
        if spec.attentions:
            raise ValueError(f"{self.name} takes no attention list (only odconv does)")
        if spec.settings:
            raise ValueError(f"{self.name} takes no settings, got {spec.settings}")

    def format(self, spec: ConvSpec) -> str:
        """The canonical spelling of ``spec``."""
        return f"{self.name}{spec.num}x"

    # -- building --------------------------------------------------------------------------
    @property
    def model_options(self) -> frozenset[str]:
        """The options a user may set through ``build_model``."""
        return frozenset(self.options) - frozenset(self.internal_options)

    def build(self, spec: ConvSpec, in_channels: int, out_channels: int, kernel_size: int, *, stride: int,
              padding: int, dilation: int, groups: int, bias: bool, **options: Any) -> nn.Module:
        """The conv of ``spec``: (B, in, H, W) -> (B, out, H', W'). ``options``: a subset of
        ``self.options``, never None."""
        raise NotImplementedError(f"conv family {self.name!r} has no builder")

    def begin_model(self, spec: ConvSpec, conv_options: dict[str, Any]) -> Any:
        """Called by ``build_model`` before the model's layers are built; what it returns is
        the build's ``state`` (:func:`odconv.model_build.current_model_build`), e.g. a KernelWarehouse manager
        that :meth:`build` reserves layers in. Default: nothing."""
        return None

    def end_model(self, model: nn.Module, state: Any) -> None:
        """Called by ``build_model`` once every layer exists (e.g. attach the manager to the
        model, ``store()`` and ``allocate(model)``). Default: nothing."""

    def shared_router(self, spec: ConvSpec, in_channels: int) -> Optional[nn.Module]:
        """The router a block's convs share under a placement with ``shared_router`` (their
        builder then gets ``routing=False`` and they are called as ``conv(x, routing=r)``)."""
        return None

    # -- placement, schedule, costs --------------------------------------------------------
    def placement_defaults(self, placement: str, model_family: str) -> PlacementDefaults:
        """Where the spec goes in a model of ``model_family`` (``"resnet"``, ``"mobilenetv2"``)
        under ``placement`` (``"matched"``, ``"paper"``). Default, both placements: where the
        official ODConv repo puts ODConv (every block conv, and MobileNetV2's last 1x1 conv)."""
        return PlacementDefaults(head=model_family == "mobilenetv2")

    def temperature_schedule(self, init: float, final: float, epochs: float) -> Optional[TemperatureSchedule]:
        """The schedule the training module applies, from its ``temperature_init``,
        ``temperature_final``, ``temperature_epochs`` (a family may use or ignore them); None:
        no schedule. Default: ``init`` -> ``final`` on every attention temperature buffer."""
        return TemperatureSchedule(init, final, epochs)

    def mac_breakdown(self, module: nn.Module, in_hw: tuple[int, int]) -> Optional[dict[str, int]]:
        """MACs per example of one of its layers by part (``conv``, ``aggregation``,
        ``attention``, ``modulation``; see docs/models.md). Default: the layer's own
        ``mac_breakdown(in_hw)``. A family whose layers have none and that does not override
        this is counted generically (what the layer executes, by ``FlopCounterMode``)."""
        fn = getattr(module, "mac_breakdown", None)
        return fn(in_hw) if callable(fn) else None

    def counts_macs(self, module: nn.Module) -> bool:
        """Whether :meth:`mac_breakdown` counts ``module`` (else the generic count applies)."""
        return (type(self).mac_breakdown is not ConvFamily.mac_breakdown
                or callable(getattr(module, "mac_breakdown", None)))

    def __repr__(self) -> str:
        return f"<conv family {self.name!r}: {self.grammar or self.name + '<n>x'}>"


# --------------------------------------------------------------------------- the registry

_FAMILIES: dict[str, ConvFamily] = {}
_BUILTIN: set[str] = set()
_state = {"builtins": False, "entry_points": False}
_entry_point_errors: list[str] = []


def _load_builtins() -> None:
    if not _state["builtins"]:
        _state["builtins"] = True
        from . import builtin_families  # deferred: it imports the layers, which import this registry
        for fam in builtin_families.BUILTIN_FAMILIES:
            _add(fam)
            _BUILTIN.add(fam.name)


def _entry_points() -> list:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_points() -> None:
    """Register the families that installed packages declare in the entry-point group
    ``odconv_bench.conv_families`` (once; later calls re-raise a failure)."""
    _load_builtins()
    if not _state["entry_points"]:
        _state["entry_points"] = True
        for ep in _entry_points():
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            try:
                obj = ep.load()
                if not isinstance(obj, types.ModuleType):       # a module registers itself on import
                    fam = register_conv_family(obj)
                    if fam.name != ep.name:
                        unregister_conv_family(fam.name)
                        raise ConvFamilyError(f"its family is named {fam.name!r}, not {ep.name!r}")
                elif ep.name not in _FAMILIES:
                    raise ConvFamilyError(f"importing module {ep.value!r} registered no family {ep.name!r}")
            except Exception as err:  # noqa: BLE001 - any failure of a plugin is reported as one error
                _entry_point_errors.append(f"entry point {ep.name!r} = {ep.value!r} of {dist!r} "
                                           f"(group {ENTRY_POINT_GROUP!r}): {type(err).__name__}: {err}")
    if _entry_point_errors:
        raise ConvFamilyError("a conv family failed to load: " + "; ".join(_entry_point_errors)
                              + " (fix or uninstall that package)")


def _check_name(fam: ConvFamily) -> None:
    name = fam.name
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConvFamilyError(f"bad conv family name {name!r}: lower-case letters, digits and '_', starting with "
                              f"a letter and not ending in a digit (e.g. 'toyconv')")
    if name in _FAMILIES:
        raise ConvFamilyError(f"conv family {name!r} is registered already ({_FAMILIES[name]!r}); "
                              f"pick another name or unregister_conv_family({name!r}) first")
    if not fam.examples:
        raise ConvFamilyError(f"conv family {name!r} gives no examples (canonical specs of its grammar)")


def _check_grammar(fam: ConvFamily) -> None:
    name, others = fam.name, [f for f in _FAMILIES.values() if f is not fam]
    for ex in fam.examples:
        try:
            spec = fam.parse(ex)
            ok = spec is not None and spec.kind == name and fam.format(spec) == ex
        except Exception as err:  # noqa: BLE001 - reported as a bad grammar
            raise ConvFamilyError(f"conv family {name!r}: its example {ex!r} does not parse: {err}") from None
        if not ok:
            raise ConvFamilyError(f"conv family {name!r}: its example {ex!r} does not parse back to itself "
                                  f"(parse() must return a ConvSpec of kind {name!r}, format() the same text)")
        for other in others:
            if _claims(other, ex):
                raise ConvFamilyError(f"conv family {name!r}: its spec {ex!r} is already family {other.name!r}'s")
    for other in others:
        for ex in other.examples:
            if _claims(fam, ex):
                raise ConvFamilyError(f"conv family {name!r}: its grammar claims {ex!r}, a spec of "
                                      f"family {other.name!r}")


def _claims(fam: ConvFamily, text: str) -> bool:
    try:
        return fam.parse(text) is not None
    except ValueError:
        return True


def _add(fam: ConvFamily) -> None:
    _check_name(fam)
    _FAMILIES[fam.name] = fam          # provisionally: its example specs look it up
    try:
        _check_grammar(fam)
    except BaseException:
        del _FAMILIES[fam.name]
        raise


def register_conv_family(family: type[ConvFamily] | ConvFamily):
    """Register a conv family: a :class:`ConvFamily` subclass (instantiated without
    arguments; use as a class decorator, which returns the class) or an instance (returned).
    Registering the same family again is a no-op; another family under a registered name, a
    bad name or a grammar that parses another family's specs is a :class:`ConvFamilyError`."""
    _load_builtins()
    cls = family if isinstance(family, type) else type(family)
    if not issubclass(cls, ConvFamily):
        raise ConvFamilyError(f"a conv family must be a ConvFamily subclass or instance, got {family!r}")
    existing = _FAMILIES.get(getattr(family, "name", None)) if isinstance(getattr(family, "name", None), str) else None
    if existing is not None and (existing is family or type(existing) is family):
        return family
    instance = family() if isinstance(family, type) else family
    _add(instance)
    return family if isinstance(family, type) else instance


def unregister_conv_family(name: str) -> ConvFamily:
    """Remove a registered family (not a built-in one); returns it."""
    _load_builtins()
    if name in _BUILTIN:
        raise ConvFamilyError(f"conv family {name!r} is built in and cannot be unregistered")
    if name not in _FAMILIES:
        raise ConvFamilyError(f"conv family {name!r} is not registered; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES.pop(name)


def conv_families() -> dict[str, ConvFamily]:
    """Every registered family by name, built-in ones first, in registration order."""
    load_entry_points()
    return dict(_FAMILIES)


def get_conv_family(name: str) -> ConvFamily:
    """The family registered as ``name``; ``ValueError`` listing the registered ones otherwise."""
    _load_builtins()
    if isinstance(name, str) and name in _FAMILIES:
        return _FAMILIES[name]
    load_entry_points()
    if isinstance(name, str) and name in _FAMILIES:
        return _FAMILIES[name]
    raise ValueError(f"unknown conv family {name!r}; registered: {', '.join(_FAMILIES)}")


def parse_with_families(text: str) -> Optional[ConvSpec]:
    """The spec of the first registered family that claims ``text``; None when none does."""
    _load_builtins()
    for fam in list(_FAMILIES.values()):
        spec = fam.parse(text)
        if spec is not None:
            return spec
    if not _state["entry_points"]:
        load_entry_points()
        return parse_with_families(text)
    return None


def grammar_help() -> tuple[str, str]:
    """(examples, grammar) of every registered family, for error messages."""
    fams = list(conv_families().values())
    examples = ", ".join(ex for f in fams for ex in f.examples)
    grammar = " | ".join(f.grammar or f"{f.name}<n>x" for f in fams)
    notes = "; ".join(f.grammar_notes for f in fams if f.grammar_notes)
    return examples, grammar + (f"; {notes}" if notes else "")


def family_of_layer(module: nn.Module) -> Optional[ConvFamily]:
    """The registered family whose ``layer_types`` holds the type of ``module`` (else the first
    one it is an instance of), or None."""
    fams = list(_FAMILIES.values())
    exact = [f for f in fams if type(module) in f.layer_types]
    return exact[0] if exact else next((f for f in fams if f.layer_types and isinstance(module, f.layer_types)), None)


def registered_layer_types() -> tuple[type, ...]:
    return tuple(t for fam in _FAMILIES.values() for t in fam.layer_types)


__all__ = ["ConvFamily", "ConvFamilyError", "PlacementDefaults", "TemperatureSchedule",
           "register_conv_family", "unregister_conv_family", "conv_families", "get_conv_family",
           "load_entry_points", "linear_temperature", "temperature_modules", "ENTRY_POINT_GROUP"]
