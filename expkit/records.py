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
