"""The script's own command line, as in Sacred: ``python exp.py [COMMAND] [with UPDATE ...]``.

Values are Python literals read with ``ast.literal_eval``; a word that is no literal is a
string. Mistakes print one line and exit with code 1, as Sacred does; an exception in
the experiment prints its traceback without expkit's frames.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import traceback
from typing import Any

from expkit.errors import ExpkitError, UsageError
from expkit.pluginmanager import hookimpl
from expkit.run import RUN_OPTIONS
from expkit.signals import SigtermInterrupt
from expkit.utils import parse_literal, suggest


def _flag_table(experiment: Any) -> dict[str, tuple[str, bool]]:
    """Every spelling of every flag -> (long name, takes a value)."""
    table: dict[str, tuple[str, bool]] = {}
    specs = [(o.short, o.long, o.takes_value) for o in RUN_OPTIONS]
    specs += [(o.short_flag, o.long_flag, not o.is_flag) for o in experiment.additional_cli_options]
    for short, long, takes_value in specs:
        for spelling in {
            short,
            long,
            long.replace("-", "_").replace("__", "--"),
            long.replace("_", "-"),
        }:
            table[spelling] = (long, takes_value)
    return table


def parse_argv(experiment: Any, argv: list[str]) -> dict:
    """Split a script command line into command, updates, named configs and options."""
    table = _flag_table(experiment)
    options: dict[str, Any] = {}
    positional: list[str] = []
    updates: list[str] = []
    in_with = False
    args = list(argv)
    while args:
        token = args.pop(0)
        if token.startswith("-") and len(token) > 1 and not _is_number(token):
            if not token.startswith("--") and len(token) > 2 and token[:2] in table:
                name, inline = token[:2], token[2:]  # -n NAME written as -nNAME
                inline = inline[1:] if inline.startswith("=") else inline
            else:
                name, _, inline = token.partition("=")
            if name not in table:
                raise UsageError(f"unknown flag {name!r}{suggest(name, list(table))}; see --help")
            long, takes_value = table[name]
            if takes_value:
                if not inline:
                    if not args:
                        raise UsageError(f"flag {name} needs a value")
                    inline = args.pop(0)
                options[long] = inline
            else:
                if inline:
                    raise UsageError(f"flag {name} takes no value")
                options[long] = True
        elif token == "with":
            in_with = True
        elif in_with:
            if token.strip():
                updates.append(token)
        else:
            positional.append(token)
    config_updates: dict[str, Any] = {}
    named_configs: list[str] = []
    for token in updates:
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if not key:
                raise UsageError(f"update {token!r} has no key; write KEY=VALUE")
            try:
                config_updates[key] = _update_value(value.strip())
            except ValueError as exc:
                raise UsageError(f"update {token!r}: {exc}") from None
        else:
            named_configs.append(token.strip())
    command = positional[0] if positional else None
    help_for = None
    if command == "help":
        help_for = positional[1] if len(positional) > 1 else ""
        positional = positional[2:]
    elif len(positional) > 1:
        raise UsageError(
            f"unexpected argument {positional[1]!r}: updates go after 'with' (with KEY=VALUE)"
        )
    return {
        "command": command,
        "help_for": help_for,
        "config_updates": config_updates,
        "named_configs": named_configs,
        "options": options,
    }


def _update_value(text: str) -> Any:
    """A ``with`` value: a Python literal, else the text (an error under STRICT_PARSING)."""
    from expkit.settings import SETTINGS

    if SETTINGS.COMMAND_LINE.STRICT_PARSING:
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"{text!r} is not a Python literal (SETTINGS.COMMAND_LINE.STRICT_PARSING is "
                "on): quote strings, e.g. name='\"text\"'"
            ) from None
    return parse_literal(text)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def usage(experiment: Any, prog: str) -> str:
    """The help text: usage lines, the module's docstring, flags and commands."""
    from expkit.run import all_commands

    lines = [
        "Usage:",
        f"  {prog} [(with UPDATE...)] [options]",
        f"  {prog} help [COMMAND]",
        f"  {prog} (-h | --help)",
        f"  {prog} COMMAND [(with UPDATE...)] [options]",
        "",
    ]
    if experiment.doc:
        lines += [textwrap.dedent(experiment.doc).strip(), ""]
    lines.append("Options:")
    flags = [(o.short, o.long, o.takes_value, o.help) for o in RUN_OPTIONS]
    flags += [
        (o.short_flag, o.long_flag, not o.is_flag, o.doc) for o in experiment.additional_cli_options
    ]
    for short, long, takes_value, text in sorted(flags, key=lambda f: f[1]):
        spelled = f"{short} {long}" + (" VALUE" if takes_value else "")
        lines.append(f"  {spelled:<28} {text}")
    lines += [
        "",
        "Arguments:",
        "  COMMAND   Name of command to run (see below for list of commands)",
        "  UPDATE    Configuration assignments of the form foo.bar=17 or a named config",
        "",
        "Commands:",
    ]
    for name, fn in all_commands(experiment).items():
        first = (fn.__doc__ or "").strip().split("\n")[0]
        lines.append(f"  {name:<28} {first}")
    return "\n".join(lines)


def _command_help(experiment: Any, name: str) -> str:
    import pydoc

    from expkit.run import find_command

    fn = find_command(experiment, name)
    text = pydoc.text.document(getattr(fn, "__wrapped__", fn))
    return pydoc.plain(text)


def _run(experiment: Any, parsed: dict) -> Any:
    from expkit.run import create_run

    options = {
        **parsed["options"],
        # As Sacred's command line gives them, to option hooks too.
        "COMMAND": parsed["command"],
        "UPDATE": _update_tokens(parsed),
        "help": False,
        "with": bool(parsed["config_updates"] or parsed["named_configs"]),
    }
    run = create_run(
        experiment,
        parsed["command"] or experiment.default_command,
        config_updates=parsed["config_updates"],
        named_configs=parsed["named_configs"],
        options=options,
        meta_info=None,
    )
    for option in experiment.additional_cli_options:
        if option.long_flag in options:
            option.apply(options[option.long_flag], run)
    if options.get("--print-config"):
        from expkit.run import find_command

        find_command(experiment, "print_config")(_run=run)
        print("-" * 79)
    run()
    return run


def _update_tokens(parsed: dict) -> list[str]:
    tokens = [f"{k}={v!r}" for k, v in parsed["config_updates"].items()]
    return tokens + list(parsed["named_configs"])


def _print_user_traceback(exc: BaseException) -> None:
    from expkit.tracebacks import format_user_traceback

    lines = format_user_traceback(exc)
    lines[0] = "Traceback (most recent calls WITHOUT expkit internals):\n"
    sys.stderr.write("".join(lines))


def _end_by_sigterm() -> None:
    """End the process the way SIGTERM ends a script (and a Sacred one): by the signal."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # closed, or a reader that went away: nothing more to show
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    sys.exit(128 + signal.SIGTERM)  # only if the signal is blocked


@hookimpl(trylast=True)
def expkit_run_commandline(experiment: Any, argv: list[str]) -> Any:
    prog = os.path.basename(argv[0]) if argv else experiment.name
    options: dict = {}
    try:
        parsed = parse_argv(experiment, argv[1:])
        options = parsed["options"]
        if options.get("--help") or parsed["help_for"] == "":
            print(usage(experiment, prog))
            sys.exit(0)
        if parsed["help_for"]:
            print(_command_help(experiment, parsed["help_for"]))
            sys.exit(0)
        return _run(experiment, parsed)
    except ExpkitError as exc:
        if options.get("--debug"):
            raise
        sys.stderr.write(f"ERROR: {exc}\n")
        sys.exit(1)
    except SigtermInterrupt:
        _end_by_sigterm()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if options.get("--debug"):
            raise
        if options.get("--pdb"):
            import pdb

            traceback.print_exception(type(exc), exc, exc.__traceback__)
            pdb.post_mortem(exc.__traceback__)
        else:
            _print_user_traceback(exc)
        sys.exit(1)
