"""Custom flags for an experiment's own command line (Sacred's ``cli_option``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class CLIOption:
    """A flag of ``python exp.py``: ``apply(args, run)`` is called after the run is made."""

    short_flag: str
    long_flag: str
    is_flag: bool
    apply: Callable[[Any, Any], None]

    @property
    def doc(self) -> str:
        """The flag's help text (the function's docstring)."""
        return (self.apply.__doc__ or "").strip()


def cli_option(short_flag: str, long_flag: str, is_flag: bool = False) -> Callable:
    """Decorator making ``f(args, run)`` a flag for ``Experiment(additional_cli_options=[f])``."""
    if not re.match(r"-\w$", short_flag):
        raise ValueError(f"short flag {short_flag!r} must be '-' and one letter")
    if not re.match(r"--[\w-]+\w$", long_flag):
        raise ValueError(f"long flag {long_flag!r} must be '--' and a name")
    return lambda fn: CLIOption(short_flag, long_flag, is_flag, fn)
