"""What collection finds and what running it reports."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import attrs


class ExitCode(enum.IntEnum):
    """The exit codes of the ``expkit`` command, as pytest's."""

    OK = 0
    RUNS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_EXPERIMENTS_COLLECTED = 5


@attrs.define
class Item:
    """One collected experiment, named by its node id ``path/exp_x.py::name``."""

    nodeid: str
    path: Path
    name: str
    experiment: Any
    keywords: frozenset[str] = frozenset()


@attrs.frozen
class CollectError:
    """A file that could not be collected, with the reason (a traceback or one line)."""

    nodeid: str
    path: Path
    message: str


@attrs.frozen
class RunReport:
    """How one item's run ended."""

    nodeid: str
    status: str  # COMPLETED, FAILED, INTERRUPTED, a custom status, or ERROR (never started)
    duration: float
    run_id: Any = None
    result: Any = None
    message: str | None = None  # one line saying what went wrong
    longrepr: str | None = None  # the user's traceback
    stored: tuple = ()  # where the run went: an expkit.delivery.StoreOutcome per store

    @property
    def ok(self) -> bool:
        """Whether the run completed."""
        return self.status == "COMPLETED"
