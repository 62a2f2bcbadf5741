"""Sweep definitions: a YAML file naming a base experiment config, the grid and options,
resolved into a :class:`SweepDef` (keys canonical, conv specs canonical, grid blocks expanded).

The file's schema is :mod:`sweeps.sweep_schema` (pydantic models, one per section: the one
place that states each key's type and default), checked first; the grid and the values of the
keys this module knows (conv specs through :func:`odconv.parse_conv_spec`, model names through
:func:`odconv.list_models`, seeds) are checked after it. ``load_sweep`` raises
:class:`SweepConfigError` naming the file, the key path, the bad value and what is valid. Every
key, type, default and error, with examples: the user's guide ``docs/sweep-files.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from odconv import list_models, parse_conv_spec

from .analysis_plan import plan_errors, plan_hash
from .grid import (
    CONV_KEY,
    MODEL_KEY,
    SEED_KEY,
    GridPoint,
    block_points,
    canonical_key,
    canonical_value,
    grid_key,
)
from .slurm_options import SlurmOptions
from .sweep_schema import (
    AnalysisSection,
    MeasureSection,
    PrecisionGoalsSection,
    RerunsSection,
    SweepFile,
    TuneSection,
    describe_error,
)


def _default(section: type, key: str) -> Any:
    """The default the schema states for ``key`` of ``section`` (stated there only)."""
    return section.model_fields[key].default


class SweepConfigError(ValueError):
    """A sweep YAML that cannot be run; the message names the file, key and valid values."""


# --- the resolved definition (what the runner, workers and aggregation read) ----------------

@dataclass
class TuneDef:
    """The tuning stage: ``params`` maps canonical CLI keys to search spaces
    (``{"type": "float"|"int", "low", "high", "log"}`` or ``{"type": "categorical", "choices"}``)."""

    params: dict[str, dict[str, Any]]
    n_trials: int = _default(TuneSection, "n_trials")
    overrides: dict[str, Any] = field(default_factory=dict)
    pruner: str = _default(TuneSection, "pruner")
    metric: str = _default(TuneSection, "metric")
    seed: int = _default(TuneSection, "seed")


@dataclass
class SweepDef:
    """A validated sweep, keys canonical (``conv`` -> ``model.conv``, conv specs canonical).

    ``blocks`` are the grid blocks, each a mapping axis -> values whose cartesian product is
    part of the grid; ``grid`` maps each axis to every value it takes in any block (first-seen
    order): the value space of the axis. A single-mapping ``grid:`` in the YAML is one block.
    Definitions saved before blocks existed have ``blocks == []``, read as ``[grid]``.
    """

    name: str
    base_config: str
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = _default(SweepFile, "metric")
    max_retries: int = _default(SweepFile, "max_retries")
    stale_after_s: float = _default(SweepFile, "stale_after_s")
    measure: dict[str, Any] = field(default_factory=lambda: MeasureSection().model_dump())
    tune: TuneDef | None = None
    description: str = ""
    source: str = ""
    blocks: list[dict[str, list[Any]]] = field(default_factory=list)
    slurm: SlurmOptions | None = None  # the `slurm:` section (None: not written; defaults apply)
    # the `reruns:` section: {"blocks": [grid blocks of grid points], "overrides": {key: value}}
    reruns: dict[str, Any] = field(default_factory=dict)
    # the `precision_goals:` section: {"main_effect": pp or None, "rows": {variant: pp}}
    precision_goals: dict[str, Any] = field(default_factory=dict)
    # the `analysis:` section as written (validated; sweeps.analysis_plan); None: no plan, results exploratory
    analysis: dict[str, Any] | None = None

    @property
    def plan_hash(self) -> str | None:
        """The hash of the analysis plan (None without one): what every trial record holds."""
        return plan_hash(self.analysis)

    def plan(self) -> AnalysisSection | None:
        return None if self.analysis is None else AnalysisSection.model_validate(self.analysis)

    def grid_points(self) -> list[GridPoint]:
        """Every grid point, in a stable order (blocks, axes and values as written)."""
        return [p for block in self.blocks or [self.grid] for p in block_points(block)]

    def rerun_pairs(self) -> list[tuple[GridPoint, GridPoint]]:
        """(rerun point, the grid point it reruns): the grid point's params plus the
        ``reruns`` overrides, which make it a point of its own (own key, record, run dir)."""
        if not self.reruns:
            return []
        extra = self.reruns["overrides"]
        return [(GridPoint({**p.params, **extra}), p) for block in self.reruns["blocks"] for p in block_points(block)]

    def points(self) -> list[GridPoint]:
        """Every point to run: the grid points, then the reruns (:meth:`rerun_pairs`)."""
        return self.grid_points() + [r for r, _ in self.rerun_pairs()]

    def grid_seeds(self) -> dict[str, list[Any]]:
        """variant -> the seeds the grid runs it at (grid order; reruns are not grid points)."""
        out: dict[str, list[Any]] = {}
        for p in self.grid_points():
            out.setdefault(p.variant, []).append(p.seed)
        return out

    def variants(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.points():
            seen.setdefault(p.variant, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepDef":
        d = dict(d)
        if d.get("tune") is not None:
            d["tune"] = TuneDef(**d["tune"])
        # a snapshot holds every option (None: unset); one written before the section was typed
        # holds {} when it was absent
        slurm = {k: v for k, v in (d.get("slurm") or {}).items() if v is not None}
        d["slurm"] = SlurmOptions.from_mapping(slurm, environ={}) if slurm else None
        return cls(**d)


def _err(src: str, msg: str) -> SweepConfigError:
    return SweepConfigError(f"{src}: {msg}")


# --- values of the keys this module knows ---------------------------------------------------

def _checked_value(src: str, where: str, key: str, value: Any) -> Any:
    """``value`` of the canonical CLI ``key``, checked and canonical where the key is known:
    conv specs (canonical spelling), model names (the registry)."""
    if key == CONV_KEY:
        try:
            return str(parse_conv_spec(value))
        except ValueError as e:
            raise _err(src, f"{where}: {e}") from None
    if key == MODEL_KEY and value not in list_models():
        raise _err(src, f"{where}: unknown model {value!r}; valid: {', '.join(list_models())}")
    return value


def _checked_mapping(src: str, where: str, mapping: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    written: dict[str, str] = {}
    for k, v in (mapping or {}).items():
        key = canonical_key(k)
        if key in out:
            raise _err(src, f"'{where}' sets {key!r} twice (as {written[key]!r} and {k!r})")
        written[key] = k
        out[key] = _checked_value(src, f"'{where}.{k}' ({key})" if key != k else f"'{where}.{k}'", key, v)
    return out


def _json_like(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return v is None or isinstance(v, (str, int, float, bool, dict, list))


_BLOCK_HELP = "a non-empty mapping of axis -> list of values, e.g. {conv: [static, odconv1x], seed: [0, 1, 2]}"
_GRID_HELP = f"{_BLOCK_HELP}, or a non-empty list of such mappings (grid blocks, joined)"


def _parse_block(src: str, where: str, block: Any) -> dict[str, list[Any]]:
    if not isinstance(block, dict) or not block:
        raise _err(src, f"'{where}' must be {_BLOCK_HELP}; got {block!r}")
    out: dict[str, list[Any]] = {}
    written: dict[str, str] = {}
    for axis, values in block.items():
        key = canonical_key(axis)
        name = f"{where} axis {axis!r}" + (f" ({key})" if key != axis else "")
        if key in out:
            raise _err(src, f"{where} gives axis {key!r} twice (as {written[key]!r} and {axis!r})")
        written[key] = axis
        if not isinstance(values, list) or not values:
            raise _err(src, f"{name} must be a non-empty list of values, got {values!r}")
        for v in values:
            if not _json_like(v):
                raise _err(src, f"{name}: value {v!r} is not a scalar or mapping")
        if key == SEED_KEY and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _err(src, f"{name} needs explicit integer seeds, got {values!r} "
                            "(seed_everything: true means seed 0, not a random seed)")
        values = [_checked_value(src, name, key, v) for v in values]
        canon = [canonical_value(v) for v in values]
        if len(set(canon)) != len(canon):
            dup = sorted({c for c in canon if canon.count(c) > 1})
            raise _err(src, f"{name} lists the same value twice: {dup}")
        out[key] = values
    return out


def _parse_blocks(src: str, where: str, raw: Any) -> list[dict[str, list[Any]]]:
    """The blocks of a grid-like key (``grid``, ``reruns.points``): one for a mapping."""
    if isinstance(raw, dict):
        return [_parse_block(src, where, raw)]
    if isinstance(raw, list) and raw:
        return [_parse_block(src, f"{where}[{i}]", b) for i, b in enumerate(raw)]
    raise _err(src, f"'{where}' must be {_GRID_HELP}; got {raw!r}")


def _parse_grid(src: str, raw: Any) -> list[dict[str, list[Any]]]:
    """The grid blocks of ``grid:`` (one block for a mapping), every point in one block only."""
    blocks = _parse_blocks(src, "grid", raw)
    first_block: dict[str, int] = {}
    for i, b in enumerate(blocks):
        for p in block_points(b):
            if p.key in first_block:
                raise _err(src, f"grid point {p.key} is in grid[{first_block[p.key]}] and in grid[{i}]; "
                                "give each point in one block only")
            first_block[p.key] = i
    return blocks


def _check_block_axes(src: str, blocks: list[dict[str, list[Any]]], overrides: dict[str, Any]) -> None:
    """Blocks may have different axes (e.g. a ladder of widths for one variant): an axis that a
    block lacks takes its value from ``overrides``, which must set it. A key that every block
    has is no override. No two points may run the same configuration."""
    axes = set().union(*blocks)
    common = set.intersection(*(set(b) for b in blocks))
    clash = sorted(set(overrides) & common)
    if clash:
        raise _err(src, f"key(s) {clash} are both in 'overrides' and in 'grid'; keep them in one place")
    for i, b in enumerate(blocks):
        unset = sorted(a for a in axes - set(b) if a not in overrides)
        if unset:
            raise _err(src, f"grid[{i}] lacks axis/axes {unset} that other blocks have; set the value its points "
                            "take in 'overrides'")
    seen: dict[str, tuple[str, int]] = {}
    for i, b in enumerate(blocks):
        for p in block_points(b):
            runs = grid_key({**{a: overrides[a] for a in axes - set(b)}, **p.params})
            if runs in seen:
                other, j = seen[runs]
                raise _err(src, f"grid points {other} (grid[{j}]) and {p.key} (grid[{i}]) run the same "
                                "configuration (the overrides fill in the axes a block lacks); give it once")
            seen[runs] = (p.key, i)


def _parse_reruns(src: str, section: RerunsSection | None, blocks: list[dict[str, list[Any]]],
                  overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``reruns:`` section: its point blocks (each point a grid point, once) and its
    overrides (keys that are no grid axis; at least one differs from the sweep's overrides)."""
    if section is None:
        return {}
    rblocks = _parse_blocks(src, "reruns.points", section.points)
    grid_keys = {p.key for b in blocks for p in block_points(b)}
    block_axes = {frozenset(b) for b in blocks}
    axes: set[str] = set()
    seen: set[str] = set()
    for b in rblocks:
        if frozenset(b) not in block_axes:
            raise _err(src, f"'reruns.points' must name grid points by a grid block's axes "
                            f"{' or '.join(str(sorted(a)) for a in block_axes)}, got axes {sorted(b)}")
        axes |= set(b)
        for p in block_points(b):
            if p.key not in grid_keys:
                raise _err(src, f"'reruns.points': {p.key} is not a grid point; a rerun repeats a grid point")
            if p.key in seen:
                raise _err(src, f"'reruns.points' lists {p.key} twice")
            seen.add(p.key)
    extra = _checked_mapping(src, "reruns.overrides", section.overrides)
    clash = sorted(set(extra) & axes)
    if clash:
        raise _err(src, f"'reruns.overrides' sets grid axis/axes {clash}; a rerun changes only what is not an axis")
    if all(k in overrides and canonical_value(overrides[k]) == canonical_value(v) for k, v in extra.items()):
        raise _err(src, f"'reruns.overrides' {extra} changes nothing: the sweep's overrides already set it")
    return {"blocks": rblocks, "overrides": extra}


def _parse_goals(src: str, section: PrecisionGoalsSection | None, variants: list[str]) -> dict[str, Any]:
    """The ``precision_goals:`` section; every row it names is a variant of the grid."""
    if section is None:
        return {}
    rows = dict(section.rows or {})
    unknown = [v for v in rows if v not in variants]
    if unknown:
        raise _err(src, f"'precision_goals.rows' names {', '.join(map(repr, unknown))}, not a variant of the "
                        f"grid; valid: {', '.join(variants)}")
    if section.main_effect is None and not rows:
        raise _err(src, "'precision_goals' sets no goal: give main_effect and/or rows")
    return {"main_effect": section.main_effect, "rows": rows}


def _parse_analysis(src: str, section: AnalysisSection | None, written: Any, variants: list[str],
                    blocks: list[dict[str, list[Any]]], overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The ``analysis:`` section, checked against the grid (sweeps.analysis_plan.plan_errors);
    kept as written, so that its hash does not change when the schema gains a defaulted key."""
    if section is None:
        return None
    seeds = list(dict.fromkeys(s for b in blocks for s in b.get(SEED_KEY, [])))
    widths = []
    for b in blocks:
        if any(c == "static" for c in b.get(CONV_KEY, [overrides.get(CONV_KEY)])):
            for opts in b.get("model.model_options", [overrides.get("model.model_options") or {}]):
                widths.append(float((opts or {}).get("width", 1.0)))
    errors = plan_errors(section, variants, seeds, sorted(set(widths)))
    if errors:
        raise _err(src, "; ".join(errors))
    return json.loads(json.dumps(written))


def _axis_values(blocks: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Axis -> every value it takes in any block, first-seen order."""
    out: dict[str, dict[str, Any]] = {}
    for b in blocks:
        for axis, values in b.items():
            for v in values:
                out.setdefault(axis, {}).setdefault(canonical_value(v), v)
    return {axis: list(vals.values()) for axis, vals in out.items()}


# --- loading ----------------------------------------------------------------------------------

def resolve_base_config(path: str, src_path: Path | None) -> str:
    p = Path(path)
    if p.is_absolute():
        return str(p)
    for root in ([Path.cwd()] + ([src_path.parent, src_path.parent.parent] if src_path else [])):
        if (root / p).exists():
            return str((root / p).resolve()) if root != Path.cwd() else str(p)
    return str(p)


def parse_sweep(raw: Any, src: str = "<sweep>", src_path: Path | None = None, check_files: bool = True) -> SweepDef:
    """Validate a loaded YAML document into a :class:`SweepDef`; raises :class:`SweepConfigError`."""
    if not isinstance(raw, dict):
        raise _err(src, "a sweep file must be a YAML mapping with keys name, base_config, grid; "
                        f"got {type(raw).__name__}")
    try:
        f = SweepFile.model_validate(raw)
    except ValidationError as e:
        raise _err(src, "; ".join(describe_error(raw, err) for err in e.errors(include_url=False))) from None
    base = resolve_base_config(f.base_config, src_path)
    if check_files and not Path(base).exists():
        raise _err(src, f"'base_config' file {f.base_config!r} does not exist (looked in {os.getcwd()})")

    blocks = _parse_grid(src, f.grid)
    grid = _axis_values(blocks)
    overrides = _checked_mapping(src, "overrides", f.overrides)
    _check_block_axes(src, blocks, overrides)

    tune = None
    if f.tune is not None:
        params: dict[str, dict[str, Any]] = {}
        for k, space in f.tune.params.items():
            key = canonical_key(k)
            if key in grid:
                raise _err(src, f"'tune.params' key {k!r} is also a grid axis")
            params[key] = space.model_dump(exclude_unset=True)  # as written, typed
        tune = TuneDef(params=params, n_trials=f.tune.n_trials,
                       overrides=_checked_mapping(src, "tune.overrides", f.tune.overrides),
                       pruner=f.tune.pruner or "none", metric=f.tune.metric, seed=f.tune.seed)
    measure = (f.measure or MeasureSection()).model_dump()
    reruns = _parse_reruns(src, f.reruns, blocks, overrides)
    if reruns and tune is not None:
        raise _err(src, "'reruns' and 'tune' cannot be combined: a rerun repeats a grid point as the grid ran it")
    variants = list(dict.fromkeys(p.variant for b in blocks for p in block_points(b)))
    goals = _parse_goals(src, f.precision_goals, variants)
    analysis = _parse_analysis(src, f.analysis, raw.get("analysis"), variants, blocks, overrides)
    return SweepDef(name=f.name, base_config=base, grid=grid, overrides=overrides, metric=f.metric,
                    max_retries=f.max_retries, stale_after_s=float(f.stale_after_s), measure=measure, tune=tune,
                    description=f.description or "", source=src, blocks=blocks, slurm=f.slurm, reruns=reruns,
                    precision_goals=goals, analysis=analysis)


def find_sweep_file(name_or_path: str) -> Path:
    """``smoke`` -> ``sweeps/smoke.yaml``; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    here = Path(__file__).resolve().parent
    for cand in (Path("sweeps") / f"{name_or_path}.yaml", here / f"{name_or_path}.yaml"):
        if cand.exists():
            return cand
    return Path("sweeps") / f"{name_or_path}.yaml"


def load_sweep(name_or_path: str | os.PathLike, check_files: bool = True) -> SweepDef:
    """Read and validate a sweep file (a path, or a name under ``sweeps/``)."""
    path = find_sweep_file(str(name_or_path))
    if not path.exists():
        avail = sorted(p.stem for p in Path("sweeps").glob("*.yaml")) if Path("sweeps").is_dir() else []
        raise SweepConfigError(f"sweep file {str(path)!r} not found"
                               + (f"; available: {', '.join(avail)}" if avail else ""))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_sweep(raw, src=str(path), src_path=path.resolve(), check_files=check_files)
