"""Value classes for the data that flows between the core and the plugins."""

from __future__ import annotations

import datetime
from typing import Any

import attrs


@attrs.frozen
class Source:
    """A source file of the experiment: its name relative to the base dir, md5 and path."""

    name: str
    md5: str
    path: str


@attrs.frozen
class Dependency:
    """An installed package the experiment imports."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@attrs.frozen
class Repository:
    """The git state of the code: remote url (or work tree), commit and dirty flag."""

    url: str
    commit: str | None
    dirty: bool


@attrs.frozen
class Artifact:
    """A file a run keeps, under ``name``, with optional metadata and content type."""

    name: str
    path: str
    metadata: dict | None = None
    content_type: str | None = None


@attrs.frozen
class Resource:
    """An input file a run used, with its md5."""

    path: str
    md5: str


@attrs.frozen
class MetricPoint:
    """One logged scalar."""

    name: str
    step: int
    value: Any
    timestamp: datetime.datetime


@attrs.frozen
class ConfigDefault:
    """A root config entry a plugin adds unless the user set it."""

    key: str
    value: Any
    doc: str = ""


@attrs.frozen
class RunRecord:
    """A stored run as every store's reader returns it.

    ``captured_out`` and ``metrics`` are ``None`` in the summaries a listing returns
    (loading them costs); :meth:`RunReader.get_run` fills them in.
    """

    id: Any
    store: str  # the URL (password redacted) of the store holding the run
    experiment: str  # the experiment's name
    status: str
    command: str | None = None
    start_time: datetime.datetime | None = None
    stop_time: datetime.datetime | None = None
    heartbeat: datetime.datetime | None = None
    config: dict = attrs.field(factory=dict)
    result: Any = None
    meta: dict = attrs.field(factory=dict)  # Sacred's meta: command, options, comment, ...
    host: dict = attrs.field(factory=dict)
    # Sacred's "experiment" document: name, base_dir, mainfile, sources [[name, ref]],
    # dependencies ["pkg==version"], repositories [{url, commit, dirty}]
    experiment_info: dict = attrs.field(factory=dict)
    info: dict = attrs.field(factory=dict)
    fail_trace: list[str] | None = None
    artifacts: tuple[str, ...] = ()
    resources: tuple[tuple[str, str], ...] = ()  # (original absolute path, md5) of each input
    captured_out: str | None = None
    metrics: dict[str, dict] | None = None  # name -> {"steps", "values", "timestamps"}

    @property
    def duration(self) -> datetime.timedelta | None:
        """How long the run ran (until its stop, or its last heartbeat while running)."""
        end = self.stop_time or self.heartbeat
        return None if end is None or self.start_time is None else end - self.start_time


def edited_meta(meta: dict, comment: str | None = None, tags: list[str] | None = None) -> dict:
    """``meta`` with ``comment`` and ``tags`` set (``None`` keeps, empty removes): ``edit_run``."""
    edited = dict(meta)
    for key, value in (("comment", comment), ("tags", tags)):
        if value is None:
            continue
        if value:
            edited[key] = list(value) if key == "tags" else value
        else:
            edited.pop(key, None)
    return edited
