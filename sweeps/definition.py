"""Sweep definitions: a YAML file naming a base experiment config, the grid and options.

Format (every key but ``name``, ``base_config`` and ``grid`` is optional)::

    name: smoke                      # results go to results/<name>/, the Optuna study is "<name>"
    base_config: experiments/smoke.yaml
    overrides:                       # applied to every trial (LightningCLI keys, dotted)
      trainer.max_epochs: 2
    grid:                            # the cartesian product of these axes is the grid
      conv: [static, odconv1x, odconv4x]        # alias of model.conv
      seed: [0, 1]                              # alias of seed_everything
      model.model_options: [{width: 0.25}]      # any other CLI key; values may be mappings
    metric: test/acc_top1            # optional; default: test top-1 when the config has a
                                     # test set, else final val top-1
    max_retries: 2                   # a trial whose process died is retried this often
    stale_after_s: 900               # heartbeat age after which another host's trial is dead
    measure: {repeats: 5, latency_batch_sizes: [1, 64], throughput_batch_size: 64}
    tune:                            # optional tuning stage (see sweeps/tune.py)
      params:
        model.lr: {type: float, low: 0.01, high: 0.4, log: true}
        model.weight_decay: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      n_trials: 12                   # per variant
      overrides: {trainer.max_epochs: 5}
      pruner: median                 # median | none
      metric: val/acc_top1

``load_sweep`` validates all of it and raises :class:`SweepConfigError` naming the file, the
key and what is valid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALIASES = {"conv": "model.conv", "seed": "seed_everything", "lr": "model.lr",
           "weight_decay": "model.weight_decay", "model_name": "model.model", "backbone": "model.model"}
SEED_KEY = "seed_everything"
CONV_KEY = "model.conv"
TOP_KEYS = {"name", "description", "base_config", "overrides", "grid", "metric", "max_retries",
            "stale_after_s", "measure", "tune"}
MEASURE_KEYS = {"repeats", "latency_batch_sizes", "throughput_batch_size", "enabled"}
TUNE_KEYS = {"params", "n_trials", "overrides", "pruner", "metric", "seed"}
PARAM_TYPES = {"float", "int", "categorical"}
METRICS = ("test/acc_top1", "val/acc_top1", "best_val/acc_top1")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepConfigError(ValueError):
    """A sweep YAML that cannot be run; the message names the file, key and valid values."""


@dataclass(frozen=True)
class GridPoint:
    """One cell of the grid: ``params`` maps canonical CLI keys to values."""

    params: dict[str, Any]

    @property
    def key(self) -> str:
        return grid_key(self.params)

    @property
    def seed(self) -> Any:
        return self.params.get(SEED_KEY)

    @property
    def variant(self) -> str:
        return variant_label({k: v for k, v in self.params.items() if k != SEED_KEY})

    @property
    def slug(self) -> str:
        return slugify(self.key)


@dataclass
class TuneDef:
    params: dict[str, dict[str, Any]]
    n_trials: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    metric: str = "val/acc_top1"
    seed: int = 0


@dataclass
class SweepDef:
    name: str
    base_config: str
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    max_retries: int = 2
    stale_after_s: float = 900.0
    measure: dict[str, Any] = field(default_factory=dict)
    tune: TuneDef | None = None
    description: str = ""
    source: str = ""

    def points(self) -> list[GridPoint]:
        """Every grid point, in a stable order (axes as written, values as written)."""
        axes = list(self.grid)
        return [GridPoint(dict(zip(axes, combo))) for combo in itertools.product(*(self.grid[a] for a in axes))]

    def variants(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.points():
            seen.setdefault(p.variant, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepDef":
        d = dict(d)
        if d.get("tune") is not None:
            d["tune"] = TuneDef(**d["tune"])
        return cls(**d)


def canonical_key(key: str) -> str:
    key = str(key).strip()
    if key.startswith("--"):
        key = key[2:]
    return ALIASES.get(key, key)


def canonical_value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def grid_key(params: dict[str, Any]) -> str:
    """A stable string naming a grid point (axes sorted, so reordering the YAML keeps keys)."""
    return ",".join(f"{k}={canonical_value(params[k])}" for k in sorted(params))


def variant_label(params: dict[str, Any]) -> str:
    """Human label of a variant: the conv spec, plus any other non-seed axis values."""
    parts = []
    if CONV_KEY in params:
        parts.append(str(params[CONV_KEY]))
    for k in sorted(params):
        if k in (CONV_KEY, SEED_KEY):
            continue
        parts.append(f"{k.split('.')[-1]}={canonical_value(params[k])}")
    return " ".join(parts) if parts else "default"


def slugify(text: str) -> str:
    """A filesystem-safe, readable and unique name for a grid key."""
    s = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text.replace("model.", "").replace("seed_everything", "seed"))
    s = s.strip("_")
    if len(s) > 80 or s != text:
        s = s[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s


def _err(src: str, msg: str) -> SweepConfigError:
    return SweepConfigError(f"{src}: {msg}")


def _check_mapping(src: str, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(src, f"'{where}' must be a mapping of dotted config keys to values, got {type(value).__name__}")
    return {canonical_key(k): v for k, v in value.items()}


def _scalar_or_mapping(v: Any) -> bool:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    if isinstance(v, (dict, list)):
        try:
            json.dumps(v)
            return True
        except TypeError:
            return False
    return False


def _validate_conv(src: str, values: list[Any]) -> list[str]:
    try:
        from odconv import parse_conv_spec
    except ImportError:  # pragma: no cover
        return [str(v) for v in values]
    out = []
    for v in values:
        try:
            out.append(str(parse_conv_spec(str(v))))
        except ValueError as e:
            raise _err(src, f"grid axis 'conv' (model.conv): {e}") from None
    if len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        raise _err(src, f"grid axis 'conv' names the same variant twice: {dup}")
    return out


def resolve_base_config(path: str, src_path: Path | None) -> str:
    p = Path(path)
    if p.is_absolute():
        return str(p)
    for root in ([Path.cwd()] + ([src_path.parent, src_path.parent.parent] if src_path else [])):
        if (root / p).exists():
            return str((root / p).resolve()) if root != Path.cwd() else str(p)
    return str(p)


def parse_sweep(raw: Any, src: str = "<sweep>", src_path: Path | None = None, check_files: bool = True) -> SweepDef:
    """Validate a loaded YAML document into a :class:`SweepDef`."""
    if not isinstance(raw, dict):
        raise _err(src, f"a sweep file must be a YAML mapping with keys name, base_config, grid; got {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _err(src, f"unknown key(s) {unknown}; valid keys: {', '.join(sorted(TOP_KEYS))}")
    for req in ("name", "base_config", "grid"):
        if req not in raw or raw[req] in (None, ""):
            raise _err(src, f"missing required key '{req}' (a sweep needs name, base_config and grid)")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err(src, f"'name' must be a simple name (letters, digits, '_', '-', '.'), got {name!r}")
    base = raw["base_config"]
    if not isinstance(base, str):
        raise _err(src, f"'base_config' must be a path to an experiments/*.yaml file, got {base!r}")
    base = resolve_base_config(base, src_path)
    if check_files and not Path(base).exists():
        raise _err(src, f"'base_config' file {raw['base_config']!r} does not exist (looked in {os.getcwd()})")

    grid_raw = raw["grid"]
    if not isinstance(grid_raw, dict) or not grid_raw:
        raise _err(src, "'grid' must be a non-empty mapping of axis -> list of values, e.g. "
                        "{conv: [static, odconv1x], seed: [0, 1, 2]}")
    grid: dict[str, list[Any]] = {}
    for axis, values in grid_raw.items():
        key = canonical_key(axis)
        if key in grid:
            raise _err(src, f"grid axis {axis!r} given twice (as {key!r})")
        if not isinstance(values, list) or not values:
            raise _err(src, f"grid axis {axis!r} must be a non-empty list of values, got {values!r}")
        for v in values:
            if not _scalar_or_mapping(v):
                raise _err(src, f"grid axis {axis!r}: value {v!r} is not a scalar or mapping")
        canon = [canonical_value(v) for v in values]
        if len(set(canon)) != len(canon):
            raise _err(src, f"grid axis {axis!r} lists a value twice: {values!r}")
        if key == CONV_KEY:
            values = _validate_conv(src, values)
        if key == SEED_KEY:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise _err(src, f"grid axis 'seed' needs explicit integer seeds, got {values!r} "
                                "(seed_everything: true means seed 0, not a random seed)")
        grid[key] = list(values)

    overrides = _check_mapping(src, "overrides", raw.get("overrides"))
    clash = sorted(set(overrides) & set(grid))
    if clash:
        raise _err(src, f"key(s) {clash} are both in 'overrides' and in 'grid'; keep them in one place")
    if CONV_KEY in overrides:
        _validate_conv(src, [overrides[CONV_KEY]])

    metric = raw.get("metric")
    if metric is not None and metric not in METRICS:
        raise _err(src, f"'metric' must be one of {', '.join(METRICS)}, got {metric!r}")
    max_retries = raw.get("max_retries", 2)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise _err(src, f"'max_retries' must be an integer >= 0, got {max_retries!r}")
    stale = raw.get("stale_after_s", 900)
    if not isinstance(stale, (int, float)) or stale < 30:
        raise _err(src, f"'stale_after_s' must be a number of seconds >= 30, got {stale!r}")

    measure = raw.get("measure") or {}
    if not isinstance(measure, dict):
        raise _err(src, f"'measure' must be a mapping with keys {sorted(MEASURE_KEYS)}")
    bad = sorted(set(measure) - MEASURE_KEYS)
    if bad:
        raise _err(src, f"unknown 'measure' key(s) {bad}; valid: {', '.join(sorted(MEASURE_KEYS))}")

    tune = None
    if raw.get("tune") is not None:
        tune = _parse_tune(src, raw["tune"], grid)
    return SweepDef(name=name, base_config=base, grid=grid, overrides=overrides, metric=metric,
                    max_retries=max_retries, stale_after_s=float(stale), measure=dict(measure), tune=tune,
                    description=str(raw.get("description", "") or ""), source=src)


def _parse_tune(src: str, t: Any, grid: dict[str, list[Any]]) -> TuneDef:
    if not isinstance(t, dict):
        raise _err(src, "'tune' must be a mapping with keys params, n_trials, overrides, pruner, metric")
    bad = sorted(set(t) - TUNE_KEYS)
    if bad:
        raise _err(src, f"unknown 'tune' key(s) {bad}; valid: {', '.join(sorted(TUNE_KEYS))}")
    params = t.get("params")
    if not isinstance(params, dict) or not params:
        raise _err(src, "'tune.params' must map config keys to search spaces, e.g. "
                        "{model.lr: {type: float, low: 0.01, high: 0.4, log: true}}")
    out: dict[str, dict[str, Any]] = {}
    for k, space in params.items():
        key = canonical_key(k)
        if key in grid:
            raise _err(src, f"'tune.params' key {k!r} is also a grid axis")
        if not isinstance(space, dict) or space.get("type") not in PARAM_TYPES:
            raise _err(src, f"'tune.params.{k}' needs 'type' in {sorted(PARAM_TYPES)}, got {space!r}")
        if space["type"] in ("float", "int"):
            if "low" not in space or "high" not in space or not space["low"] < space["high"]:
                raise _err(src, f"'tune.params.{k}' needs numbers low < high, got {space!r}")
            if space.get("log") and space["low"] <= 0:
                raise _err(src, f"'tune.params.{k}': log scale needs low > 0, got {space['low']!r}")
        else:
            if not isinstance(space.get("choices"), list) or not space["choices"]:
                raise _err(src, f"'tune.params.{k}' (categorical) needs a non-empty 'choices' list")
        out[key] = dict(space)
    n_trials = t.get("n_trials", 10)
    if not isinstance(n_trials, int) or n_trials < 1:
        raise _err(src, f"'tune.n_trials' must be an integer >= 1, got {n_trials!r}")
    pruner = t.get("pruner", "median")
    if pruner not in ("median", "none", None):
        raise _err(src, f"'tune.pruner' must be 'median' or 'none', got {pruner!r}")
    metric = t.get("metric", "val/acc_top1")
    if metric != "val/acc_top1":
        raise _err(src, f"'tune.metric' must be val/acc_top1 (the test set is never used to tune), got {metric!r}")
    return TuneDef(params=out, n_trials=n_trials, overrides=_check_mapping(src, "tune.overrides", t.get("overrides")),
                   pruner=pruner or "none", metric=metric, seed=int(t.get("seed", 0)))


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
    path = find_sweep_file(str(name_or_path))
    if not path.exists():
        avail = sorted(p.stem for p in Path("sweeps").glob("*.yaml")) if Path("sweeps").is_dir() else []
        raise SweepConfigError(f"sweep file {str(path)!r} not found" + (f"; available: {', '.join(avail)}" if avail else ""))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_sweep(raw, src=str(path), src_path=path.resolve(), check_files=check_files)
