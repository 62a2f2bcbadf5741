"""``odconv-sweep`` (also ``python -m sweeps``): the command line of the sweeps
(:mod:`sweeps.cli.commands`, one function per command; :mod:`sweeps.cli.args`, the argument types)."""

from .commands import main

__all__ = ["main"]
