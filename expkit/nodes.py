"""What collection finds and what running it reports."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from expkit.cli import Config


class ExitCode(enum.IntEnum):
    """The exit codes of the ``expkit`` command, as pytest's."""

    OK = 0
    RUNS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_EXPERIMENTS_COLLECTED = 5


@attrs.frozen
class SweepPoint:
    """Where a run stands in its sweep: stored with the run as ``meta.sweep``."""

    id: str  # the same command gives the same id, so a resumed sweep stays one sweep
    index: int  # 0-based, in the order of the full expansion
    size: int  # how many points the sweep has in all
    params: dict  # the config entries this point sets, dotted keys as on the command line

    def as_meta(self) -> dict:
        """The ``meta.sweep`` entry of the run."""
        return {"id": self.id, "index": self.index, "size": self.size, "params": self.params}


@attrs.frozen
class Skip:
    """Why an item is not run, and the stored run that stands for it, if any."""

    reason: str
    run_id: Any = None
    result: Any = None


@attrs.define
class Item:
    """One collected experiment, named by its node id ``path/exp_x.py::name``.

    A point of a sweep is an item of its own, like a parametrized test:
    ``exp_iris.py::exp_rbf_svm[C=0.1-kernel=rbf]``, with ``params`` its config entries
    and ``originalname`` the experiment's own name.
    """

    nodeid: str
    path: Path
    name: str
    experiment: Any
    keywords: frozenset[str] = frozenset()
    params: dict = attrs.field(factory=dict)
    sweep: SweepPoint | None = None
    skip: Skip | None = None  # set when the item is not to run (e.g. it completed before)

    @property
    def originalname(self) -> str:
        """The experiment's name without the point's ``[...]`` part."""
        return self.name.partition("[")[0]


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
    status: str  # COMPLETED, FAILED, INTERRUPTED, SKIPPED, a custom status, or ERROR
    duration: float
    run_id: Any = None
    result: Any = None
    message: str | None = None  # one line saying what went wrong
    longrepr: str | None = None  # the user's traceback
    stored: tuple = ()  # where the run went: an expkit.delivery.StoreOutcome per store
    metrics: dict = attrs.field(factory=dict)  # the last value of each metric the run logged

    @property
    def ok(self) -> bool:
        """Whether the run completed."""
        return self.status == "COMPLETED"

    @property
    def not_stored(self) -> bool:
        """Whether a store of the run refused or lost it (see ``StoreOutcome.missing``)."""
        return any(outcome.missing for outcome in self.stored)


@attrs.frozen
class LiveStatus:
    """What a running item shows while it runs: its latest metric values and progress."""

    nodeid: str
    started: float  # time.time() when it started
    metrics: dict = attrs.field(factory=dict)  # name -> last value logged
    step: int | None = None  # progress reported with log_scalar(..., total=N)
    total: int | None = None

    @classmethod
    def of(cls, nodeid: str, started: float, run: Any) -> LiveStatus:
        """The live status of ``run`` now."""
        progress = run.progress
        step, total = (progress[1], progress[2]) if progress else (None, None)
        return cls(nodeid, started, run.latest_metrics(), step, total)


@attrs.define
class Session:
    """One invocation of ``expkit run``: what it collected, and the reports of its runs."""

    config: Config
    items: list[Item] = attrs.field(factory=list)
    errors: list[CollectError] = attrs.field(factory=list)
    reports: list[RunReport] = attrs.field(factory=list)
    deselected: list[Item] = attrs.field(factory=list)
    stores: list = attrs.field(factory=list)
    store_urls: list[str] = attrs.field(factory=list)
    updates: dict[str, Any] = attrs.field(factory=dict)  # -o and --seed, for every run
    shouldstop: bool = False
    interrupted: bool = False  # Ctrl-C: the running items were stopped, no more start
