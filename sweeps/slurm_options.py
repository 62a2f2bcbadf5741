"""What each SLURM worker job asks the scheduler for: :class:`SlurmOptions`, the typed
``slurm:`` section of a sweep file (:mod:`sweeps.sweep_schema`), built by
:meth:`SlurmOptions.from_mapping` from that mapping with overrides from ``ODCONV_SLURM_*``
environment variables; a bad key or value raises :class:`SlurmOptionsError` naming it and what
is valid. Shared by the sweep file's model and the launcher (:mod:`sweeps.running.slurm`, which
submits the jobs); imports no scheduler client."""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "ODCONV_SLURM_"
SIGNALS = ("USR1", "USR2")
# sbatch options the typed fields (or this module) set; `extra_sbatch` may not set them too.
_MANAGED_SBATCH = {
    "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
    "time": "time_min", "mem": "mem_gb", "gpus-per-node": "gpus_per_job", "cpus-per-task": "cpus_per_task",
    "signal": "signal / signal_before_s", "requeue": "(always set)", "no-requeue": "(requeue is always set)",
    "output": "(submitit's log files)", "error": "(submitit's log files)", "open-mode": "(submitit's log files)",
    "job-name": "submit_jobs(job_name=...)", "array": "(one job per worker)",
    "nodes": "(one node per job)", "ntasks-per-node": "(one task per job)",
}
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.,:&|()!*+=-]+$")  # partition/account/qos names and constraint expressions


class SlurmOptionsError(ValueError):
    """A bad `slurm:` option or ODCONV_SLURM_* variable; the message names it and what is valid."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each worker job asks SLURM for (one node, one task per job).

    ``extra_sbatch`` maps further sbatch long options (without ``--``) to a value, or to
    ``True`` for a flag: e.g. ``{"exclude": "node07", "exclusive": True}``.
    """

    gpus_per_job: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None            # None: the partition's default
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal: str = "USR1"                   # sent to the job step signal_before_s before the time limit
    signal_before_s: int = 120
    max_timeout_requeues: int = 100        # submitit stops requeueing a job after this many time-outs
    extra_sbatch: dict[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a warning at or before the start would preempt every job as soon as it runs
        if self.signal_before_s >= self.time_min * 60:
            raise SlurmOptionsError(
                f"slurm.signal_before_s: must be less than the time limit (time_min {self.time_min} = "
                f"{self.time_min * 60} s), got {self.signal_before_s}: the warning would come at the job's start")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> SlurmOptions:
        """Options from `mapping` (e.g. a sweep file's ``slurm:`` section), each overridden by
        a non-empty ``ODCONV_SLURM_<KEY>`` in `environ` (default ``os.environ``): e.g.
        ``ODCONV_SLURM_PARTITION=gpu``, ``ODCONV_SLURM_TIME_MIN=240``,
        ``ODCONV_SLURM_EXTRA_SBATCH="--exclude=node07 --exclusive"``."""
        environ = os.environ if environ is None else environ
        mapping = {} if mapping is None else mapping
        if not isinstance(mapping, Mapping):
            raise SlurmOptionsError(f"slurm: must be a mapping of options, got {mapping!r}; "
                                    f"valid keys: {', '.join(cls.keys())}")
        unknown = sorted(str(k) for k in mapping if k not in cls.keys())
        if unknown:
            raise SlurmOptionsError(f"slurm: unknown key(s) {unknown}; valid keys: {', '.join(cls.keys())}")
        unknown_env = sorted(k for k in environ if k.startswith(ENV_PREFIX)
                             and k[len(ENV_PREFIX):].lower() not in cls.keys())
        if unknown_env:
            valid = ", ".join(ENV_PREFIX + k.upper() for k in cls.keys())
            raise SlurmOptionsError(f"unknown environment variable(s) {unknown_env}; valid: {valid}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name = ENV_PREFIX + f.name.upper()
            if environ.get(env_name, "") != "":
                values[f.name] = _parse(f.name, environ[env_name], env_name, from_env=True)
            elif f.name in mapping:
                values[f.name] = _parse(f.name, mapping[f.name], f"slurm.{f.name}", from_env=False)
        return cls(**values)

    def with_environment(self, environ: Mapping[str, str] | None = None) -> SlurmOptions:
        """These options, each overridden by a non-empty ``ODCONV_SLURM_<KEY>`` in `environ`
        (default ``os.environ``), as :meth:`from_mapping` applies them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return SlurmOptions.from_mapping({k: v for k, v in values.items() if v is not None}, environ)

    def with_overrides(self, **overrides: Any) -> SlurmOptions:
        """A copy with some fields replaced (e.g. from command-line flags), validated like a mapping."""
        unknown = sorted(set(overrides) - set(self.keys()))
        if unknown:
            raise SlurmOptionsError(f"unknown slurm option(s) {unknown}; valid: {', '.join(self.keys())}")
        return replace(self, **{k: _parse(k, v, f"slurm.{k}", from_env=False) for k, v in overrides.items()})

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "nodes": 1,
            "ntasks_per_node": 1,
            # the wrapper's handler for this signal is what requeues the job (see the module doc)
            "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={self.signal}"],
            "additional_parameters": {**self.extra_sbatch, "requeue": True,
                                      "signal": f"{self.signal}@{self.signal_before_s}"},
        }
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.mem_gb is not None:
            params["mem"] = f"{max(1, math.ceil(self.mem_gb * 1024))}M"
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params


def _parse(name: str, raw: Any, where: str, from_env: bool) -> Any:
    """One option's value, converted from a string where it came from the environment."""
    def bad(expected: str) -> SlurmOptionsError:
        return SlurmOptionsError(f"{where}: {expected}, got {raw!r}")

    if name in ("gpus_per_job", "cpus_per_task", "time_min", "signal_before_s", "max_timeout_requeues"):
        lowest = {"gpus_per_job": 0, "cpus_per_task": 1, "time_min": 1, "signal_before_s": 0,
                  "max_timeout_requeues": 0}[name]
        value = raw
        if from_env and isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            value = int(raw)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise bad(f"must be an integer >= {lowest}")
        if name == "signal_before_s" and value > 65535:
            raise bad("must be at most 65535 (sbatch --signal's limit)")
        return value
    if name == "mem_gb":
        value = raw
        if from_env and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise bad("must be a number of GiB > 0") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise bad("must be a number of GiB > 0")
        return float(value)
    if name in ("partition", "account", "qos", "constraint"):
        if not isinstance(raw, str) or not _NAME.fullmatch(raw):
            raise bad("must be a non-empty name without spaces")
        return raw
    if name == "signal":
        value = raw.upper().removeprefix("SIG") if isinstance(raw, str) else raw
        if value not in SIGNALS:
            raise bad(f"must be one of {', '.join(SIGNALS)}")
        return value
    if name == "extra_sbatch":
        if from_env:
            return _parse_extra(_sbatch_tokens(raw, where), where)
        if not isinstance(raw, Mapping):
            raise bad("must be a mapping of sbatch long options (without --) to values")
        return _parse_extra(dict(raw), where)
    raise SlurmOptionsError(f"unknown slurm option {name!r}")  # unreachable: keys are checked first


def _sbatch_tokens(raw: str, where: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for token in shlex.split(raw):
        if not token.startswith("--"):
            raise SlurmOptionsError(f"{where}: sbatch options must be long options like --exclude=node07, "
                                    f"got {token!r}")
        key, sep, value = token[2:].partition("=")
        out[key] = value if sep else True
    return out


def _parse_extra(extra: dict[Any, Any], where: str) -> dict[str, str | int | bool]:
    out: dict[str, str | int | bool] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not _SBATCH_KEY.fullmatch(key):
            raise SlurmOptionsError(f"{where}: {key!r} is not an sbatch long option name (like 'exclude')")
        if key in _MANAGED_SBATCH:
            raise SlurmOptionsError(f"{where}: {key!r} is set by the launcher; use {_MANAGED_SBATCH[key]} instead")
        if not isinstance(value, (str, int, bool)) or value is False or value == "":
            raise SlurmOptionsError(f"{where}.{key}: must be a string, an integer or true (a flag), got {value!r}")
        out[key] = value
    return out
