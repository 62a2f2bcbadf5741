"""A grid point's LightningCLI as a trial resolves it (the sweep's base config, overrides and the
point's values), built but not run: for measuring a point without training it (the estimate,
the sweep bench), and the plain data of its resolved config (the trial record)."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from lightning_modules.cli import main as cli_main

from .trial_spec import build_cli_args


@contextmanager
def quiet_cli_warnings() -> Iterator[None]:
    """Silence, in this block, the warnings that building a LightningCLI from a sweep raises and
    that say nothing about the sweep."""
    with warnings.catch_warnings():
        # sys.argv is the sweep's or the trial's own command line, on purpose (Lightning's DDP
        # launcher re-runs the trial command for ranks > 0), beside the args given to the CLI
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        # Lightning's CLI calls jsonargparse APIs that jsonargparse 4.49 deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
        yield


def build_cli(args: list[str]) -> Any:
    """``lightning_modules.cli.main(args, run=False)`` without the CLI's irrelevant warnings."""
    with quiet_cli_warnings():
        return cli_main(args, run=False)


def build_point(base_config: str, overrides: dict[str, Any]) -> Any:
    """The LightningCLI of one grid point as a trial resolves it (base config + ``overrides``),
    built but not run, without a logger or run directory: its ``model``, ``datamodule``,
    ``trainer`` and ``config``."""
    with tempfile.TemporaryDirectory() as tmp:
        return build_cli(build_cli_args(base_config, {**overrides, "trainer.logger": False}, tmp))


def resolved_config(cli: Any) -> dict[str, Any]:
    """The CLI's resolved config as plain data (what the record keeps); values jsonargparse
    cannot serialize are kept as their ``str``."""
    try:
        return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_validation=True)) or {}
    except (TypeError, yaml.YAMLError):  # dump: a value the parser cannot serialize
        try:
            return json.loads(json.dumps(cli.config.as_dict(), default=str))
        except (TypeError, ValueError):  # e.g. a circular reference
            return {"unavailable": True}
