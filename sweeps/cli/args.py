"""Argument types of the ``odconv-sweep`` command line: each turns a bad value into one
argparse error line naming it and what is valid."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from lightning_modules.contract import EXIT_BAD_INPUT


def device_arg(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return v


def positive_seconds(text: str) -> float:
    """A number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one ``-h`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} -h)\n")
