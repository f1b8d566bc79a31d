"""``expkit --help``, ``--version``, ``expkit plugins`` and ``--trace-config``."""

from __future__ import annotations

from typing import Any

import expkit
from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_addoption(parser: Any) -> None:
    group = parser.getgroup("general")
    group.addoption("--version", action="store_true", help="print the version and exit")
    group.addoption(
        "--trace-config",
        action="store_true",
        help="list the loaded plugins, where they come from and their import time",
    )


def plugin_lines(config: Any) -> list[str]:
    """One line per loaded plugin: name, origin (with distribution and version), import time."""
    lines = ["active plugins:"]
    for info in config.pluginmanager.infos.values():
        origin = info.origin
        if info.distribution:
            origin += f" ({info.distribution} {info.version or ''})".rstrip()
        lines.append(
            f"  {info.name:<22} {origin:<28} {info.import_seconds * 1000:7.1f} ms  {info.module}"
        )
    return lines


@hookimpl
def expkit_report_header(config: Any) -> list[str]:
    return plugin_lines(config) if config.option.trace_config else []


@hookimpl(tryfirst=True)
def expkit_cmdline_main(config: Any) -> int | None:
    from expkit.nodes import ExitCode  # the `expkit` command's; `python exp.py` never needs it

    if config.option.version:
        print(f"expkit {expkit.__version__}")
        return ExitCode.OK
    if config.command == "plugins" or (config.command == "help" and config.option.trace_config):
        print("\n".join(plugin_lines(config)))
        return ExitCode.OK
    if config.command == "help":
        print(config.parser.format_help())
        return ExitCode.OK
    return None
