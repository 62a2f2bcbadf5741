"""The schema of a sweep file (pydantic models, one per section: known keys only, YAML types as
written) and the one-line description of a schema error. What the keys mean: the user's
guide ``docs/sweep-files.md``; the checks of the grid and of the values of known keys (conv
specs, model names, seeds): :mod:`sweeps.definition`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator

from lightning_modules.contract import SWEEP_METRICS

from .slurm_options import SlurmOptions, SlurmOptionsError

Metric = Literal["test/acc_top1", "val/acc_top1", "best_val/acc_top1"]
METRICS: tuple[str, ...] = get_args(Metric)
assert set(METRICS) == set(SWEEP_METRICS), "the schema's metrics are lightning_modules.contract.SWEEP_METRICS"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Section(BaseModel):
    """A mapping of the sweep file: known keys only, YAML types as written (no "3" -> 3)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def known_keys_only(cls, data: Any) -> Any:
        # before pydantic's own "extra" check, to name the valid keys too
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; valid keys: {', '.join(sorted(cls.model_fields))}")
        return data


def _simple_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"must be a simple name (letters, digits, '_', '-', '.'), got {name!r}")
    return name


PositiveInt = Annotated[int, Field(ge=1)]
DottedMapping = dict[str, Any]  # LightningCLI keys (dotted, aliases allowed) -> values


class MeasureSection(_Section):
    """``measure:``: how each trial measures cost after its fit."""

    enabled: bool = True
    repeats: PositiveInt = 5
    latency_batch_sizes: list[PositiveInt] = [1, 64]
    throughput_batch_size: PositiveInt | None = None  # None: the data module's batch size


class ParamSpace(_Section):
    """``tune.params.<key>``: an Optuna search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def fits_its_type(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError(f"a categorical space needs a non-empty 'choices' list and no low/high, "
                                 f"got choices={self.choices!r}")
            return self
        if self.choices is not None:
            raise ValueError(f"'choices' is for type categorical, not {self.type}")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} space needs numbers low < high, got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low!r}")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"an int space needs integer low and high, got low={self.low!r}, high={self.high!r}")
        return self


class TuneSection(_Section):
    """``tune:``: the optional tuning stage (per variant, on the validation set)."""

    params: Annotated[dict[str, ParamSpace], Field(min_length=1)]
    n_trials: PositiveInt = 10
    overrides: DottedMapping | None = None
    pruner: Literal["median", "none"] | None = "median"  # None = "none"
    metric: Literal["val/acc_top1"] = "val/acc_top1"  # the test set is never used to tune
    seed: int = 0


class RerunsSection(_Section):
    """``reruns:``: grid points run again with ``overrides`` that must not change the result."""

    # a grid block or a list of them, each point a grid point: checked by sweeps.definition
    points: Any
    overrides: Annotated[DottedMapping, Field(min_length=1)]


class PrecisionGoalsSection(_Section):
    """``precision_goals:``: the half-widths (percentage points) of the 95% intervals a study
    aims for: of every main effect of the attention factorial, and of named rows against
    their reference. Checked against the results by ``odconv-sweep results``."""

    main_effect: Annotated[float, Field(gt=0)] | None = None
    rows: dict[str, Annotated[float, Field(gt=0)]] | None = None


def _slurm_options(raw: Any) -> SlurmOptions | None:
    """The ``slurm:`` section as :class:`SlurmOptions` (ODCONV_SLURM_* variables apply at
    submission, not here); :class:`SlurmOptionsError` names the bad key or value."""
    if raw is None or isinstance(raw, SlurmOptions):
        return raw
    return SlurmOptions.from_mapping(raw, environ={})


#: The cost axes of the iso-cost comparison (sweeps.reporting.isocost.AXES has their columns).
CostAxis = Literal["params", "macs", "train_time", "latency_b1", "train_memory"]
COST_AXES: tuple[str, ...] = get_args(CostAxis)
FrontierOrder = Literal[1, 2, "rule"]  # a line, a quadratic, or the data's rule (sweeps.reporting.isocost)


class ContrastSection(_Section):
    """``analysis.contrasts[i]``: the mean of ``variants`` (a pooled group when several) against
    the static frontier at equal cost on ``axis``, or against another variant."""

    name: Annotated[str, AfterValidator(_simple_name)]
    variants: Annotated[list[str], Field(min_length=1)]
    against: str = "frontier"
    axis: CostAxis = "macs"
    role: Literal["primary", "secondary"] = "secondary"  # each role is one family for the correction


class AnalysisSection(_Section):
    """``analysis:``: the analysis plan, fixed before the runs it covers (docs/sweep-files.md).
    Its hash goes into every trial record; ``make results`` reports each result it covers as
    pre-specified or exploratory (sweeps.analysis_plan)."""

    seeds: Annotated[list[int], Field(min_length=2)]  # the seeds the plan covers
    frontier_widths: list[float] | None = None  # the static rungs the frontier is fitted to (None: all)
    frontier_order: dict[CostAxis, FrontierOrder] = {}  # an axis not named: "rule"
    primary_axes: list[CostAxis] = []
    contrasts: list[ContrastSection] = []
    seed_block: bool = True  # the seed as a block in every fit
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05  # two-sided
    correction: Literal["holm", "bonferroni", "none"] = "holm"  # within each role's family


class SweepFile(_Section):
    """A sweep YAML file as written (before the grid and the known keys' values are checked)."""

    name: Annotated[str, AfterValidator(_simple_name)]
    base_config: Annotated[str, Field(min_length=1)]
    # a mapping axis -> values (one block) or a list of them: checked by sweeps.definition, whose
    # messages say more than a union type's would
    grid: Any
    description: str | None = None
    overrides: DottedMapping | None = None
    metric: Metric | None = None
    max_retries: Annotated[int, Field(ge=0)] = 2
    stale_after_s: Annotated[float, Field(ge=30)] = 900.0
    measure: MeasureSection | None = None
    tune: TuneSection | None = None
    # what each worker job asks SLURM for (`--launcher slurm`)
    slurm: Annotated[SlurmOptions | None, PlainValidator(_slurm_options)] = None
    reruns: RerunsSection | None = None
    precision_goals: PrecisionGoalsSection | None = None
    analysis: AnalysisSection | None = None


def _key_path(raw: Any, loc: tuple[Any, ...]) -> str:
    """Dotted path of a pydantic error location in the YAML document (union-member tags,
    which are no keys of the document, left out)."""
    parts, cur = [], raw
    for i, el in enumerate(loc):
        if isinstance(cur, dict) and el in cur:
            cur = cur[el]
        elif isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur):
            parts.append(f"[{el}]")
            cur = cur[el]
            continue
        elif i < len(loc) - 1:
            continue
        parts.append(str(el))
    return ".".join(parts).replace(".[", "[")


def describe_error(raw: Any, err: dict[str, Any]) -> str:
    """One line for a pydantic error ``err`` of the document ``raw``: the key path, the bad
    value and what is valid."""
    path = _key_path(raw, err["loc"])
    where = f"'{path}'" if path else "the file"
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        top = len(err["loc"]) == 1
        return f"missing required key '{path}'" + (" (a sweep needs name, base_config and grid)" if top else "")
    if kind == "value_error" and isinstance(ctx.get("error"), SlurmOptionsError):
        return str(ctx["error"])  # it names its key already
    if kind == "value_error":
        return f"{where}: {ctx['error']}" if path else str(ctx["error"])
    if kind == "literal_error":
        return f"{where} must be one of {ctx['expected']}, got {got!r}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{where} must be {'>=' if 'ge' in ctx else '>'} {ctx.get('ge', ctx.get('gt'))}, got {got!r}"
    if kind == "too_short":
        return f"{where} must have at least {ctx['min_length']} item(s), got {got!r}"
    if kind in ("model_type", "dict_type"):
        return f"{where} must be a mapping, got {type(got).__name__} {got!r}"
    hint = ""
    if kind == "float_type" and isinstance(got, str):
        try:
            float(got)
            hint = " (YAML reads a number like 1e-5 as text: write 1.0e-5)"
        except ValueError:
            pass
    return f"{where}: {err['msg']}, got {got!r}{hint}"
