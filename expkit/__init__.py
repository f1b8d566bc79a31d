"""expkit: set up, run and keep track of computational experiments.

Sacred's experiment model (config scopes, injection by parameter name, automatic
seeding, observers that keep every run) in the shape of pytest: a core of hooks
and every concern a pluggy plugin.
"""

from __future__ import annotations

import importlib

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

# Without importing typing, which costs more than the rest of ``import expkit``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from expkit.commandline import cli_option
    from expkit.experiment import Experiment, Ingredient
    from expkit.info import IgnoreHostInfo, host_info_gatherer, host_info_getter
    from expkit.module import config, fixture, named_config, parametrize
    from expkit.observers import RunObserver
    from expkit.run import Run
    from expkit.settings import SETTINGS

# Imported on first use, so that ``import expkit`` (a plugin, a tool that only asks the
# version) does not pay for the experiment model; ``from expkit import Experiment`` does.
_LAZY = {
    "Experiment": "expkit.experiment",
    "Ingredient": "expkit.experiment",
    "config": "expkit.module",
    "fixture": "expkit.module",
    "named_config": "expkit.module",
    "parametrize": "expkit.module",
    "RunObserver": "expkit.observers",
    "IgnoreHostInfo": "expkit.info",
    "Run": "expkit.run",
    "host_info_gatherer": "expkit.info",
    "host_info_getter": "expkit.info",
    "cli_option": "expkit.commandline",
    "SETTINGS": "expkit.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'expkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"


def main(args: list[str] | None = None, plugins: Any = ()) -> int:
    """Run the ``expkit`` command line in this process and return its exit code."""
    from expkit.cli import main as _main

    return _main(args, plugins=plugins)


def console_main() -> int:
    """Entry point of the ``expkit`` console script."""
    import sys

    code = main(sys.argv[1:])
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        from expkit.cli import output_closed

        return output_closed()
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
    "host_info_getter",
    "main",
    "named_config",
    "parametrize",
]
