"""``expkit --help``, ``expkit COMMAND --help``, ``--version``, ``expkit plugins`` and
``--trace-config``."""

from __future__ import annotations

from typing import Any

import expkit
from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_addoption(parser: Any) -> None:
    group = parser.getgroup("general")
    group.addoption(
        "-h", "--help", action="store_true", help="show the help (of the command given) and exit"
    )
    group.addoption("--version", action="store_true", help="print the version and exit")
    group.addoption(
        "--trace-config",
        action="store_true",
        help="list the loaded plugins, where they come from and their import time",
    )
    parser.addcommand(
        "plugins", "plugins", "list the loaded plugins and where they come from", ("plugins",)
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
        print(general_help(config.parser))
        return ExitCode.OK
    if config.option.help and config.command != "runs":  # the runs plugin explains its own
        print(command_help(config.parser, config.command))
        return ExitCode.OK
    return None


def general_help(parser: Any) -> str:
    """``expkit --help``: the commands, then every option."""
    lines = [
        "usage: expkit COMMAND [ARGS] [options]",
        "",
        "Run experiments and keep track of every run.",
    ]
    lines.append("")
    lines.append("commands:")
    lines += [f"  {c.synopsis:<27}{c.summary}" for c in parser.commands.values()]
    lines += ["", "'expkit COMMAND --help' shows the options of one command.", "", ""]
    return "\n".join(lines) + parser.format_options()


def command_help(parser: Any, command: str) -> str:
    """``expkit COMMAND --help``: its synopsis, what it does and its options."""
    found = parser.commands[command]
    summary = found.summary
    head = f"usage: expkit {found.synopsis} [options]\n\n{summary[0].upper()}{summary[1:]}.\n\n"
    if found.options is None:
        # Every option but those that belong to another command alone.
        own = {c.group for c in parser.commands.values() if c.group and c.name != command}
        return head + parser.format_options(skip_groups=own)
    return head + parser.format_options(found.options)
