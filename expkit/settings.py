"""Process-wide settings, shaped like Sacred's ``SETTINGS`` so migrated code keeps working."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any


class _Section(SimpleNamespace):
    """A group of settings; assigning a name it does not have is an error."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dict__:
            known = ", ".join(sorted(self.__dict__))
            raise AttributeError(f"unknown setting {name!r}; known: {known}")
        super().__setattr__(name, value)


CAPTURE_MODES = ("fd", "sys", "no")

SETTINGS = _Section(
    CONFIG=_Section(
        ENFORCE_KEYS_MONGO_COMPATIBLE=True,
        ENFORCE_KEYS_NO_EQUALS=True,
        READ_ONLY_CONFIG=False,
        IGNORED_COMMENTS=["^pylint:", "^noinspection", "^noqa", "^type:"],
        # _rnd is a numpy.random.RandomState instead of a Generator, as in Sacred.
        NUMPY_RANDOM_LEGACY_API=False,
    ),
    HOST_INFO=_Section(
        INCLUDE_GPU_INFO=True,
        INCLUDE_CPU_INFO=True,
        CAPTURED_ENV=[],
    ),
    # fd capture reads pipes with select.poll, which Windows lacks: Sacred's default there too.
    CAPTURE_MODE="sys" if sys.platform == "win32" else "fd",
    DISCOVER_SOURCES="imported",
    DISCOVER_DEPENDENCIES="imported",
    DEFAULT_BEAT_INTERVAL=10.0,
)
