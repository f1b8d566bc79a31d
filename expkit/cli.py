"""The ``expkit`` command: parse the command line, load the plugins, hand over to them.

Like pytest's ``main``: plugins add their options (``expkit_addoption``), are
configured (``expkit_configure``) and one of them carries out the command
(``expkit_cmdline_main``). Usage mistakes print one line and exit with 4.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from expkit.errors import ExpkitError, UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import PluginManager, create_plugin_manager, set_plugin_manager
from expkit.projectconfig import ProjectSettings, find_rootdir, load_settings


@attrs.frozen
class Command:
    """A command of ``expkit`` (``run``, ``runs``, ...), declared by the plugin carrying it out."""

    name: str
    synopsis: str
    summary: str
    # The option dests its help shows; None: every option but those of other commands' groups.
    options: tuple[str, ...] | None = None
    group: str | None = None  # the option group that belongs to this command alone


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


class Parser:
    """Where plugins add their command-line options (``expkit_addoption``)."""

    def __init__(self) -> None:
        # -h is helpconfig's option: it prints the help of the command it follows.
        self._parser = _ArgumentParser(prog="expkit", add_help=False)
        self._groups: dict[str, Any] = {}
        self.commands: dict[str, Command] = {}

    def addcommand(
        self,
        name: str,
        synopsis: str,
        summary: str,
        options: tuple[str, ...] | None = None,
        group: str | None = None,
    ) -> None:
        """Declare the command ``name``; its plugin carries it out in ``expkit_cmdline_main``."""
        self.commands[name] = Command(name, synopsis, summary, options, group)
        # Shown in this order: running first, then the others by name.
        first = ("run", "--collect-only")
        order = sorted(
            self.commands, key=lambda c: (c not in first, first.index(c) if c in first else 0, c)
        )
        self.commands = {c: self.commands[c] for c in order}

    def addoption(self, *names: str, **kwargs: Any) -> None:
        """Add an option, with :meth:`argparse.ArgumentParser.add_argument`'s arguments."""
        self._parser.add_argument(*names, **kwargs)

    def getgroup(self, name: str, description: str = "") -> Any:
        """A named section of the help, with ``addoption``."""
        if name not in self._groups:
            group = self._parser.add_argument_group(name, description)
            group.addoption = group.add_argument  # type: ignore[attr-defined]
            self._groups[name] = group
        return self._groups[name]

    def parse(self, args: list[str]) -> argparse.Namespace:
        """Parse ``args``; a mistake raises :class:`~expkit.errors.UsageError`."""
        # Options and positional arguments may come in any order, as in pytest.
        return self._parser.parse_intermixed_args(args)

    def format_help(self) -> str:
        """The help text."""
        return self._parser.format_help()

    def format_options(
        self, dests: Iterable[str] | None = None, skip_groups: Iterable[str] = ()
    ) -> str:
        """The help of every option group but ``skip_groups``; or, given ``dests``, of
        those options in that order, under one heading."""
        formatter = self._parser._get_formatter()
        if dests is not None:
            order = {dest: n for n, dest in enumerate(dests)}
            actions = [a for a in self._parser._actions if a.dest in order]
            formatter.start_section("options")
            formatter.add_arguments(sorted(actions, key=lambda a: order[a.dest]))
            formatter.end_section()
            return formatter.format_help()
        for group in self._parser._action_groups:
            if group._group_actions and group.title not in skip_groups:
                formatter.start_section(group.title)
                formatter.add_arguments(group._group_actions)
                formatter.end_section()
        return formatter.format_help()

    def option_strings(self, dest: str) -> list[str]:
        """The flags of the option stored under ``dest`` (``["-x", "--exitfirst"]``)."""
        return next((a.option_strings for a in self._parser._actions if a.dest == dest), [])


@attrs.define
class Config:
    """The parsed command line, the project settings and the plugin manager of one invocation."""

    command: str
    args: list[str]
    option: argparse.Namespace
    rootdir: Path
    inifile: Path | None
    settings: ProjectSettings
    pluginmanager: PluginManager
    invocation_dir: Path
    parser: Parser
    session: Any = None  # set by the plugin that runs the session

    def getoption(self, name: str, default: Any = None) -> Any:
        """The value of option ``name`` (its dest, e.g. ``"capture"``)."""
        return getattr(self.option, name, default)


def _split_command(args: list[str], commands: Iterable[str]) -> tuple[str, list[str]]:
    commands = [c for c in commands if not c.startswith("-")]
    if args and args[0] in commands:
        return args[0], args[1:]
    if "--collect-only" in args or "--co" in args:
        return "run", args
    if not args or args[0] in ("-h", "--help", "--version", "--trace-config"):
        return "help", args
    raise UsageError(
        f"unknown command {args[0]!r}; use one of {', '.join(commands)} "
        "(e.g. 'expkit run exp_iris.py')"
    )


def _prescan_plugins(args: list[str]) -> tuple[list[str], list[str]]:
    early, blocked = [], []
    for i, arg in enumerate(args):
        value = None
        if arg == "-p" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("-p") and len(arg) > 2:
            value = arg[2:]
        if value is not None:
            (blocked if value.startswith("no:") else early).append(value.removeprefix("no:"))
    return early, blocked


def output_closed() -> ExitCode:
    """The reader of the output went away (``expkit runs list | head -1``): stop quietly.

    Standard output is pointed at the null device, so that the flush at exit does not
    fail again. The exit code is 0: the reader took what it wanted, nothing failed.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # no file descriptor behind sys.stdout (an in-process caller captures it)
    return ExitCode.OK


def make_config(args: list[str], plugins: Any = (), invocation_dir: Path | None = None) -> Config:
    """Load the plugins and parse ``args`` (the command first) as if typed in ``invocation_dir``.

    The plugins are not configured yet (``expkit_configure``). Workers of a parallel session
    make their config this way from the command line the user typed.
    """
    invocation_dir = invocation_dir or Path.cwd()
    early, blocked = _prescan_plugins(args)
    pm = create_plugin_manager(blocked=blocked, early=early, plugins=plugins, command=True)
    parser = Parser()
    parser.addoption(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="NAME",
        help="load plugin NAME early; -p no:NAME blocks it",
    )
    pm.hook.expkit_addoption.call_historic(kwargs={"parser": parser})
    command, rest = _split_command(args, parser.commands)
    option = parser.parse(rest)
    # The project root follows the paths the command names, as in pytest; parsed first,
    # so that no option's value is taken for a path.
    paths = [str(p) for p in getattr(option, "paths", None) or ()]
    rootdir, inifile = find_rootdir(paths, invocation_dir)
    settings = load_settings(inifile)
    if settings.blocked_plugins or settings.enabled_plugins:
        for name in settings.blocked_plugins:
            pm.block(name)
            if pm.has_plugin(name):
                pm.unregister(name=name)
        pm.register_named(settings.enabled_plugins, origin="-p")
        option = parser.parse(rest)  # with the options of the plugins the project adds
    return Config(
        command=command,
        args=rest,
        option=option,
        rootdir=rootdir,
        inifile=inifile,
        settings=settings,
        pluginmanager=pm,
        invocation_dir=invocation_dir,
        parser=parser,
    )


def main(args: list[str] | None = None, plugins: Any = ()) -> int:
    """Run the ``expkit`` command line with ``args``; return the exit code."""
    args = list(sys.argv[1:] if args is None else args)
    installed, previous = False, None
    try:
        config = make_config(args, plugins)
        pm = config.pluginmanager
        command = config.command
        previous, installed = set_plugin_manager(pm), True
        pm.hook.expkit_configure.call_historic(kwargs={"config": config})
        try:
            code = pm.hook.expkit_cmdline_main(config=config)
        finally:
            pm.hook.expkit_unconfigure(config=config)
        if code is None:
            raise UsageError(f"no plugin carries out the command {command!r}")
        return int(code)
    except UsageError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return ExitCode.USAGE_ERROR
    except ExpkitError as exc:
        # A store that cannot be read, a run that cannot be made: said in one line.
        sys.stderr.write(f"ERROR: {exc}\n")
        return ExitCode.RUNS_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return output_closed()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or ExitCode.OK
        sys.stderr.write(f"{exc.code}\n")
        return ExitCode.RUNS_FAILED
    except Exception:
        sys.stderr.write("INTERNAL ERROR: expkit itself failed; please report this:\n")
        traceback.print_exc()
        return ExitCode.INTERNAL_ERROR
    finally:
        if installed:
            set_plugin_manager(previous)
