"""The installed distributions on ``sys.path``: names, versions, entry points.

Read straight from their ``.dist-info`` / ``.egg-info`` folders, with the rules of
``importlib.metadata`` (the first folder on ``sys.path`` wins a name). Importing
``importlib.metadata`` pulls in the ``email`` package and costs 15-30 ms, a third of
the start-up a no-op experiment may take; these few files are all expkit reads.
"""

from __future__ import annotations

import os
import re
import sys

import attrs


@attrs.frozen
class Distribution:
    """An installed distribution's metadata folder, found on ``sys.path``."""

    folder: str  # absolute
    canonical_name: str  # lower case, runs of ``-_.`` as one ``-``

    def read_text(self, filename: str) -> str | None:
        """The text of ``filename`` in the metadata folder, or ``None``."""
        return _read(os.path.join(self.folder, filename)) or None

    @property
    def name(self) -> str:
        """The name the distribution declares for itself (``Name:`` in its metadata)."""
        return self._headers().get("name") or self.canonical_name

    @property
    def version(self) -> str | None:
        """The version the distribution declares (``Version:`` in its metadata), if any."""
        return self._headers().get("version") or None

    def _headers(self) -> dict[str, str]:
        cached = _HEADERS.get(self.folder)
        if cached is None:
            # An old-style install may leave "foo-1.0.egg-info" as a file: the metadata itself.
            text = self.read_text("METADATA") or self.read_text("PKG-INFO") or _read(self.folder)
            cached = _HEADERS[self.folder] = _parse_headers(text)
        return cached


@attrs.frozen
class EntryPoint:
    """One ``name = value`` line of a group in a distribution's ``entry_points.txt``."""

    name: str
    value: str
    group: str
    dist: Distribution


# Read once per process: installing packages while a process runs is not expected to show.
_HEADERS: dict[str, dict[str, str]] = {}
_SCANS: dict[tuple[str, ...], dict[str, Distribution]] = {}
_ENTRY_POINTS: dict[tuple[tuple[str, ...], str], list[EntryPoint]] = {}
_SUFFIXES = (".dist-info", ".egg-info")


def canonical(name: str) -> str:
    """``name`` normalised as packaging does: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions() -> dict[str, Distribution]:
    """Every distribution visible on ``sys.path``, by canonical name, scanned once per path."""
    key = _search_path()
    found = _SCANS.get(key)
    if found is None:
        found = _SCANS[key] = _scan(key)
    return found


def _search_path() -> tuple[str, ...]:
    # Absolute: "" (the working directory, first in `python -c` and notebooks) must not
    # resolve somewhere else after an os.chdir.
    return tuple(os.path.abspath(entry or ".") for entry in sys.path)


def distribution(name: str) -> Distribution | None:
    """The distribution called ``name`` (any spelling), or ``None``."""
    return distributions().get(canonical(name))


def version(name: str) -> str | None:
    """The version of the distribution called ``name``, or ``None`` when not installed."""
    dist = distribution(name)
    return None if dist is None else dist.version


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group``, in ``sys.path`` order of their distributions."""
    key = (_search_path(), group)
    found = _ENTRY_POINTS.get(key)
    if found is None:
        header = f"[{group}]"
        found = _ENTRY_POINTS[key] = []
        for dist in distributions().values():
            text = dist.read_text("entry_points.txt")
            if text and header in text:
                found.extend(
                    EntryPoint(name, value, group, dist)
                    for section, name, value in _parse_ini(text)
                    if section == group
                )
    return list(found)


def _scan(path: tuple[str, ...]) -> dict[str, Distribution]:
    found: dict[str, Distribution] = {}
    for folder in path:
        try:
            names = sorted(os.listdir(folder))
        except OSError:  # not a folder: a zip, a missing entry
            continue
        for name in names:
            if name.lower().endswith(_SUFFIXES):
                # "foo_bar-1.0.dist-info", "foo_bar.egg-info", "foo_bar-1.0-py3.11.egg-info"
                _add(found, name.rpartition(".")[0], os.path.join(folder, name))
            elif name == "EGG-INFO" and folder.lower().endswith(".egg"):
                _add(found, os.path.basename(folder).rpartition(".")[0], os.path.join(folder, name))
    return found


def _add(found: dict[str, Distribution], stem: str, folder: str) -> None:
    name = canonical(stem.partition("-")[0])
    if name:
        found.setdefault(name, Distribution(folder, name))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _parse_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the description follows the headers
        key, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            headers.setdefault(key.strip().lower(), value.strip())
    return headers


def _parse_ini(text: str) -> list[tuple[str, str, str]]:
    """``(section, name, value)`` of an ``entry_points.txt``, as ``importlib.metadata`` reads it."""
    rows = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        name, sep, value = line.partition("=")
        if sep:
            rows.append((section, name.strip(), value.strip()))
    return rows
