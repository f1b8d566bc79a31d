"""expkit: set up, run and keep track of computational experiments.

Sacred's experiment model (config scopes, injection by parameter name, automatic
seeding, observers that keep every run) in the shape of pytest: a core of hooks
and every concern a pluggy plugin.
"""

from __future__ import annotations

from typing import Any

from expkit.commandline import cli_option
from expkit.errors import (
    ConfigAddedError,
    ConfigError,
    ExpkitError,
    ExpkitInterrupt,
    MissingConfigError,
    SacredError,
    SacredInterrupt,
    TimeoutInterrupt,
    UsageError,
)
from expkit.experiment import Experiment, Ingredient
from expkit.module import config, fixture, named_config
from expkit.observers import RunObserver
from expkit.run import IgnoreHostInfo, Run, host_info_gatherer
from expkit.settings import SETTINGS

__version__ = "0.1.0"


def main(args: list[str] | None = None, plugins: Any = ()) -> int:
    """Run the ``expkit`` command line in this process and return its exit code."""
    from expkit.cli import main as _main

    return _main(args, plugins=plugins)


def console_main() -> int:
    """Entry point of the ``expkit`` console script."""
    import sys

    code = main(sys.argv[1:])
    sys.stdout.flush()
    return code


__all__ = [
    "SETTINGS",
    "ConfigAddedError",
    "ConfigError",
    "Experiment",
    "ExpkitError",
    "ExpkitInterrupt",
    "IgnoreHostInfo",
    "Ingredient",
    "MissingConfigError",
    "Run",
    "RunObserver",
    "SacredError",
    "SacredInterrupt",
    "TimeoutInterrupt",
    "UsageError",
    "cli_option",
    "config",
    "fixture",
    "host_info_gatherer",
    "main",
    "named_config",
]
