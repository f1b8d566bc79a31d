"""The project root and the ``[tool.expkit]`` defaults read from its ``pyproject.toml``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from expkit.errors import UsageError
from expkit.settings import CAPTURE_MODES

__all__ = ["CAPTURE_MODES", "ProjectSettings", "find_rootdir", "load_settings"]


@attrs.frozen
class ProjectSettings:
    """The ``[tool.expkit]`` settings, with the defaults for anything not written there."""

    paths: list[str] = attrs.field(factory=lambda: ["."])
    file_patterns: list[str] = attrs.field(factory=lambda: ["exp_*.py"])
    function_patterns: list[str] = attrs.field(factory=lambda: ["exp_*"])
    store: str | None = None
    capture: str | None = None
    plugins: list[str] = attrs.field(factory=list)
    beat_interval: float | None = None

    @property
    def enabled_plugins(self) -> list[str]:
        """The plugin names to load, in the order written."""
        return [name for name in self.plugins if not name.startswith("no:")]

    @property
    def blocked_plugins(self) -> list[str]:
        """The plugin names written ``no:NAME``, without the prefix."""
        return [name[3:] for name in self.plugins if name.startswith("no:")]


def find_rootdir(args: list[str], cwd: Path) -> tuple[Path, Path | None]:
    """The project root and its ``pyproject.toml`` (None when there is none) for these arguments.

    ``args`` are the positional arguments (paths and node ids; anything starting with ``-`` is
    skipped). The search goes upwards from the common ancestor of those that name existing
    paths, a node id counting by its path part, or from ``cwd`` when none does. The nearest
    ``pyproject.toml`` with a ``[tool.expkit]`` table wins, then the nearest one at all.
    """
    cwd = Path(os.path.abspath(cwd))
    start = _common_ancestor(args, cwd)
    nearest: Path | None = None
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if not candidate.is_file():
            continue
        if _expkit_table(candidate) is not None:
            return directory, candidate
        if nearest is None:
            nearest = candidate
    if nearest is not None:
        return nearest.parent, nearest
    return cwd, None


def load_settings(pyproject: Path | None) -> ProjectSettings:
    """Read ``[tool.expkit]`` from ``pyproject`` (the defaults when None or without that table)."""
    table = None if pyproject is None else _expkit_table(pyproject)
    if table is None:
        return ProjectSettings()
    values = {}
    for key, value in table.items():
        check = _CHECKS.get(key)
        if check is None:
            known = ", ".join(_CHECKS)
            raise UsageError(f"{pyproject}: [tool.expkit]: unknown key {key!r} (known: {known})")
        expected = check(value)
        if expected:
            raise UsageError(
                f"{pyproject}: [tool.expkit] {key}: expected {expected}, got {value!r}"
            )
        values[key] = float(value) if key == "beat_interval" else value
    return ProjectSettings(**values)


def _common_ancestor(args: list[str], cwd: Path) -> Path:
    directories = []
    for arg in args:
        if arg.startswith("-"):
            continue
        path = Path(os.path.abspath(cwd / arg.partition("::")[0]))
        if path.is_dir():
            directories.append(path)
        elif path.exists():
            directories.append(path.parent)
    if not directories:
        return cwd
    return Path(os.path.commonpath(directories))


def _expkit_table(pyproject: Path) -> dict[str, Any] | None:
    # Imported here: only projects with a pyproject.toml pay for the parser.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on Python 3.10
        import tomli as tomllib

    try:
        with open(pyproject, "rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{pyproject}: not valid TOML: {error}") from None
    except OSError as error:
        raise UsageError(f"{pyproject}: cannot be read: {error.strerror}") from None
    tool = document.get("tool")
    table = tool.get("expkit") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{pyproject}: tool.expkit: expected a table, got {table!r}")
    return table


# Each check returns what was expected when the value is wrong, and "" when it is fine.
def _string_list(value: Any) -> str:
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
    return "" if ok else "a non-empty list of non-empty strings"


def _plugin_list(value: Any) -> str:
    ok = isinstance(value, list) and all(isinstance(v, str) and v not in ("", "no:") for v in value)
    return "" if ok else "a list of plugin names (NAME to load, no:NAME to block)"


def _store(value: Any) -> str:
    return "" if isinstance(value, str) and value else "a store URL or path (a non-empty string)"


def _capture(value: Any) -> str:
    return "" if value in CAPTURE_MODES else "one of " + ", ".join(map(repr, CAPTURE_MODES))


def _beat_interval(value: Any) -> str:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return "" if number and 0 < value < float("inf") else "a positive number of seconds"


_CHECKS: dict[str, Callable[[Any], str]] = {
    "paths": _string_list,
    "file_patterns": _string_list,
    "function_patterns": _string_list,
    "store": _store,
    "capture": _capture,
    "plugins": _plugin_list,
    "beat_interval": _beat_interval,
}
