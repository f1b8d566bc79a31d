"""What the driver of a parallel session sends its workers (``-n``, ``--dask``).

Value classes only; the plugins that start workers import this module when they are used.
"""

from __future__ import annotations

import attrs

from expkit.nodes import SweepPoint

__all__ = ["PointSpec", "SessionSpec", "ShippedFile"]


@attrs.frozen
class ShippedFile:
    """A file of the project sent to workers that do not share the folder."""

    path: str  # relative to the root, with forward slashes
    md5: str
    content: bytes


@attrs.frozen
class SessionSpec:
    """What a worker needs to run items as the driver would."""

    args: tuple[str, ...]  # the command line after ``run``, as typed
    invocation_dir: str
    rootdir: str
    store_urls: tuple[str, ...]  # resolved by the driver; empty with -u
    files: tuple[ShippedFile, ...] = ()  # only for workers that may not share the folder
    command: str = "run"  # the command whose options ``args`` are (``tune`` for its trials)


@attrs.frozen
class PointSpec:
    """One item to run: its experiment (file and name) and, for a point, its values."""

    path: str  # the experiment file, relative to the root
    name: str  # the experiment's own name (without [...])
    nodeid: str
    params: dict = attrs.field(factory=dict)
    sweep: SweepPoint | None = None
    meta: dict = attrs.field(factory=dict)  # entries for the run's ``meta`` (``study``)
