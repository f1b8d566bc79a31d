"""Finding experiment files under the paths given on the command line."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from expkit.errors import UsageError

__all__ = ["find_experiment_files", "split_node_id"]

# Folders that never hold the user's experiments, only tooling, builds or installed packages.
_SKIPPED_NAMES = frozenset(
    {"__pycache__", "node_modules", "build", "dist", "site-packages", ".tox"}
)
# The copies a store keeps of the experiments' sources are not experiments to run.
_STORE_NAMES = frozenset({"_sources", "_resources", "hashfs"})
_VENV_NAMES = frozenset({"venv", ".venv", "env"})


def find_experiment_files(paths: list[Path], file_patterns: list[str]) -> list[Path]:
    """The experiment files named by ``paths``, each once, in the order given.

    A file is taken as it is; a directory is walked recursively in sorted order for files whose
    name matches one of ``file_patterns``, skipping hidden folders, virtual environments, caches
    and build output. Returned paths keep the form of the argument they were found under.
    """
    matches = _name_matcher(file_patterns)
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            for file in _walk(os.fspath(path), matches, set()):
                found.setdefault(os.path.abspath(file), Path(file))
        elif path.exists():
            found.setdefault(os.path.abspath(path), path)
        else:
            raise UsageError(f"file or directory not found: {path}")
    return list(found.values())


def split_node_id(arg: str) -> tuple[str, str | None]:
    """Split ``path::name`` into the path and the name; a plain path gives ``(path, None)``."""
    path, sep, name = arg.partition("::")
    if not sep:
        return arg, None
    if not path or not name:
        raise UsageError(f"malformed node id {arg!r}: expected PATH::NAME")
    return path, name


def _name_matcher(patterns: list[str]) -> Callable[[str], bool]:
    if not patterns:
        return lambda name: False
    # One compiled regex for all patterns: the walk tests every file name against it.
    regex = re.compile("|".join(fnmatch.translate(os.path.normcase(p)) for p in patterns))
    return lambda name: regex.match(os.path.normcase(name)) is not None


def _walk(
    directory: str, matches: Callable[[str], bool], seen: set[tuple[int, int]]
) -> Iterator[str]:
    # Symlinked folders are followed, so each folder is remembered by identity to stop at cycles.
    stat = os.stat(directory)
    if (stat.st_dev, stat.st_ino) in seen:
        return
    seen.add((stat.st_dev, stat.st_ino))
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except PermissionError:
        return
    # As pytest does: a folder's own files first, then its subfolders, each in name order.
    subdirectories = []
    for entry in entries:
        if entry.is_dir():
            if not _skipped(entry):
                subdirectories.append(entry.path)
        elif matches(entry.name) and entry.is_file():
            yield entry.path
    for subdirectory in subdirectories:
        yield from _walk(subdirectory, matches, seen)


def _skipped(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name in _SKIPPED_NAMES or name.endswith(".egg-info"):
        return True
    if name in _STORE_NAMES:
        return True
    if os.path.exists(os.path.join(entry.path, "pyvenv.cfg")):
        return True
    return name in _VENV_NAMES and (
        os.path.exists(os.path.join(entry.path, "bin", "activate"))
        or os.path.exists(os.path.join(entry.path, "Scripts", "activate"))
    )
