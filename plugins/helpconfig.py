"""``expkit --help``, ``expkit COMMAND --help``, ``--version``, ``expkit plugins`` and
``--trace-config``."""

from __future__ import annotations

from typing import Any

import expkit
from expkit.pluginmanager import hookimpl

# Every command: its synopsis, what it does, and which options its help shows (the
# option dests; None: every option but those of the groups of other commands).
COMMANDS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "run": ("run [PATH|NODEID ...]", "run the experiments found, record every run", None),
    "--collect-only": (
        "--collect-only [PATH ...]",
        "list what 'expkit run' would run",
        None,  # `expkit --collect-only --help` is `expkit run --help`
    ),
    "config": (
        "config NODEID|FILE",
        "print the config an experiment would run with",
        ("overrides", "named", "force", "plugins"),
    ),
    "plugins": ("plugins", "list the loaded plugins and where they come from", ("plugins",)),
    "runs": ("runs SUBCOMMAND", "list, show, diff, rm, export, metrics, artifact", ()),
    "rerun": (
        "rerun ID",
        "run a stored run again from its sources, and compare",
        ("overrides", "check", "stores", "plugins"),
    ),
    "sync": ("sync SRC DST", "deliver spooled runs, or copy runs between stores", ("plugins",)),
    "ui": (
        "ui",
        "serve a web view of the runs in the stores",
        ("stores", "ui_host", "ui_port", "ui_open", "ui_allow_delete", "plugins"),
    ),
    "tune": (
        "tune NODEID --sweep ...",
        "search hyperparameters with Optuna, every trial a stored run",
        (
            *("sweeps", "trials", "minimize", "maximize", "objective", "sampler", "pruner"),
            *("study", "tune_timeout", "importance", "numprocesses", "dask", "overrides"),
            *("named", "stores", "seed", "capture", "comment", "force", "verbose", "quiet"),
            "plugins",
        ),
    ),
}
# Option groups that belong to one command: `expkit run --help` leaves them out.
_COMMAND_GROUPS = ("runs", "rerun", "ui", "tune")


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
    lines += [f"  {synopsis:<27}{summary}" for synopsis, summary, _ in COMMANDS.values()]
    lines += ["", "'expkit COMMAND --help' shows the options of one command.", "", ""]
    return "\n".join(lines) + parser.format_options()


def command_help(parser: Any, command: str) -> str:
    """``expkit COMMAND --help``: its synopsis, what it does and its options."""
    synopsis, summary, dests = COMMANDS[command]
    head = f"usage: expkit {synopsis} [options]\n\n{summary[0].upper()}{summary[1:]}.\n\n"
    if dests is None:
        return head + parser.format_options(skip_groups=_COMMAND_GROUPS)
    return head + parser.format_options(dests)
