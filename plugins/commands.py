"""The commands every experiment has (print_config, print_dependencies, save_config, ...)
and ``expkit config``, which prints what ``print_config`` would, without a run."""

from __future__ import annotations

import os
import sys
from typing import Any

from expkit.configuration import ConfigScope, join_path
from expkit.pluginmanager import hookimpl
from expkit.serialize import dumps, to_data

_DOC_COLUMN = 35


def _use_colour(run: Any = None) -> bool:
    terminal = getattr(run, "stdout_is_terminal", None)
    if terminal is None:
        terminal = sys.stdout.isatty()
    return terminal and os.environ.get("NO_COLOR") is None


def _paint(text: str, kind: str | None, colour: bool) -> str:
    if not (colour and kind):
        return text
    # colorama only when colouring: most runs never print their config to a terminal.
    from colorama import Fore, Style

    colours = {
        "modified": Fore.BLUE,
        "added": Fore.GREEN,
        "typechanged": Fore.RED,
        "doc": Style.DIM,
    }
    return f"{colours[kind]}{text}{Style.RESET_ALL}"


def format_config(config: dict, summary: Any, colour: bool) -> str:
    """The config as ``print_config`` shows it: changes coloured, docs aligned."""
    import pprint  # here, not at the top: every run loads this plugin, few print their config

    added = set(getattr(summary, "added", ()))
    modified = set(getattr(summary, "modified", ()))
    typechanged = set(getattr(summary, "typechanged", {}))
    docs = dict(getattr(summary, "docs", {}))
    changed = added | modified | typechanged
    header = ", ".join(_paint(k, k, colour) for k in ("modified", "added", "typechanged", "doc"))
    lines = [f"Configuration ({header}):"]

    def kind_of(path: str) -> str | None:
        if path in typechanged:
            return "typechanged"
        if path in added:
            return "added"
        if path in modified or any(c.startswith(path + ".") for c in changed):
            return "modified"
        return None

    def emit(text: str, path: str, indent: int) -> None:
        plain = " " * indent + text
        line = " " * indent + _paint(text, kind_of(path), colour)
        doc = docs.get(path)
        if doc:
            pad = _DOC_COLUMN - len(plain) if len(plain) < _DOC_COLUMN else 2
            line += " " * (pad + 2) + _paint(f"# {doc}", "doc", colour)
        lines.append(line)

    def walk(node: dict, prefix: str, indent: int) -> None:
        if "__doc__" in node:
            lines.append(" " * indent + _paint(f'"""{node["__doc__"]}"""', "doc", colour))
        leaves = sorted(k for k, v in node.items() if not isinstance(v, dict) and k != "__doc__")
        branches = sorted(k for k, v in node.items() if isinstance(v, dict))
        for key in leaves:
            value = pprint.pformat(node[key]).replace("\n", "\n" + " " * (indent + len(key) + 3))
            emit(f"{key} = {value}", join_path(prefix, key), indent)
        for key in branches:
            emit(f"{key}:", join_path(prefix, key), indent)
            walk(node[key], join_path(prefix, key), indent + 2)

    walk(config, "", 2)
    return "\n".join(lines)


def print_config(_run: Any) -> None:
    """Print the configuration of this run: changes coloured, documentation aligned."""
    print(format_config(_run.config, _run.config_modifications, _use_colour(_run)))


def print_dependencies(_run: Any) -> None:
    """Print the packages, source files and git repositories this experiment depends on."""
    record = _run.experiment_record
    colour = _use_colour(_run)
    lines = ["Dependencies:"]
    lines += [f"  {d.name:<20} == {d.version}" for d in record.dependencies]
    lines += ["", "Sources:"]
    lines += [f"  {s.name:<43}  {s.md5}" for s in record.sources]
    if record.repositories:
        lines += ["", "Version Control:"]
        for repo in record.repositories:
            mark = _paint("M", "typechanged", colour) if repo.dirty else " "
            lines.append(f"{mark} {repo.url:<43}  {repo.commit}")
    print("\n".join(lines))


def save_config(_config: dict, _log: Any, config_filename: str = "config.json") -> None:
    """Write the config to a .json or .yaml file: ``save_config with config_filename=x.yaml``."""
    data = to_data({k: v for k, v in _config.items() if k != "config_filename"})
    ext = os.path.splitext(config_filename)[1].lower()
    if ext in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=True)
    elif ext == ".json":
        text = dumps(data) + "\n"
    else:
        from expkit.errors import UsageError

        raise UsageError(f"save_config: cannot write {config_filename!r}; use .json or .yaml")
    try:
        with open(config_filename, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        from expkit.errors import UsageError

        raise UsageError(
            f"save_config: cannot write {config_filename!r}: {exc.strerror or exc}"
        ) from None
    _log.info("Saved the configuration to %s", config_filename)


def print_named_configs(_run: Any) -> None:
    """Print the named configs of this experiment and their documentation."""
    colour = _use_colour(_run)
    lines = [f"Named Configurations ({_paint('doc', 'doc', colour)}):"]
    named = list(_run.experiment.gather_named_configs())
    if not named:
        lines.append("  No named configs")
    for name, conf in named:
        doc = conf.__doc__ if isinstance(conf, ConfigScope) else None
        line = f"  {name}"
        if doc:
            doc = doc.strip()
            if "\n" in doc:
                line += "\n" + _paint(f'    """{doc}"""', "doc", colour)
            else:
                line += " " * max(_DOC_COLUMN - len(line), 2) + _paint(f"# {doc}", "doc", colour)
        lines.append(line)
    print("\n".join(lines))


for _command in (print_config, print_dependencies, save_config, print_named_configs):
    _command.unobserved = True  # type: ignore[attr-defined]


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "config",
        "config NODEID|FILE",
        "print the config an experiment would run with",
        ("overrides", "named", "force", "plugins"),
    )


@hookimpl
def expkit_builtin_commands(experiment: Any) -> dict:
    return {
        "print_config": print_config,
        "print_dependencies": print_dependencies,
        "save_config": save_config,
        "print_named_configs": print_named_configs,
    }


@hookimpl
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "config":
        return None
    return show_config(config)


def show_config(config: Any) -> int:
    """``expkit config NODEID|FILE``: the config the experiment would run with, and only that.

    No run is made, so nothing is logged, recorded or captured.
    """
    from expkit.errors import ExpkitError, UsageError
    from expkit.nodes import ExitCode
    from expkit.resolve import check_added_entries, resolve_config
    from expkit.run import find_command
    from expkit_plugins.session import Session, collect, parse_overrides

    paths = list(config.option.paths)
    if len(paths) != 1:
        raise UsageError(
            "expkit config takes one node id or file: expkit config exp_iris.py::exp_rbf_svm"
        )
    session = Session(config)
    collect(session)
    if session.errors:
        raise UsageError(f"cannot collect {paths[0]}:\n{session.errors[0].message}")
    if len(session.items) != 1:
        found = [item.nodeid for item in session.items]
        if not found:
            raise UsageError(f"no experiment in {paths[0]}")
        raise UsageError(
            f"{paths[0]} holds {len(found)} experiments; name one: "
            + ", ".join(f"expkit config {nodeid}" for nodeid in found[:3])
            + (" ..." if len(found) > 3 else "")
        )
    item = session.items[0]
    experiment = item.experiment
    updates = parse_overrides(config.option.overrides)
    if config.option.seed is not None:
        updates["seed"] = config.option.seed
    command = experiment.default_command
    try:
        summary = resolve_config(experiment, updates or None, list(config.option.named), command)
        if not config.option.force and command is not None:
            uses = [find_command(experiment, command), *experiment.extra_functions()]
            check_added_entries(experiment, summary, uses)
    except ExpkitError as exc:
        raise UsageError(f"{item.nodeid}: {exc}") from None
    print(format_config(summary, summary, _use_colour()))
    return ExitCode.OK
