"""Process-wide settings, shaped like Sacred's ``SETTINGS`` so migrated code keeps working.

Every key Sacred 0.8.7 documents is here, read as ``SETTINGS.CONFIG.READ_ONLY_CONFIG``
or ``SETTINGS["CONFIG"]["READ_ONLY_CONFIG"]``. Keys that have no effect in expkit are
accepted so that migrated code runs; docs/migrating.rst lists them.
"""

from __future__ import annotations

import sys
from collections.abc import ItemsView, Iterator, KeysView
from types import SimpleNamespace
from typing import Any

from expkit.errors import ExpkitError


class SettingError(ExpkitError, AttributeError):
    """A setting that does not exist, or a group of settings replaced by a plain value."""


class _Section(SimpleNamespace):
    """A group of settings, read as attributes or items; a name it lacks cannot be set."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dict__:
            raise SettingError(f"unknown setting {name!r}; known: {', '.join(sorted(self))}")
        current = self.__dict__[name]
        if isinstance(current, _Section) and not isinstance(value, _Section):
            raise SettingError(
                f"{name!r} is a group of settings; set its entries instead, e.g. "
                f"SETTINGS.{name}.{next(iter(current))}"
            )
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise SettingError(f"settings cannot be removed ({name!r})")

    # Sacred's SETTINGS is a dict too (a Munch): SETTINGS["CONFIG"]["READ_ONLY_CONFIG"].
    def __getitem__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise KeyError(f"unknown setting {name!r}") from None

    __setitem__ = __setattr__
    __delitem__ = __delattr__

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def get(self, name: str, default: Any = None) -> Any:
        """The setting ``name``, or ``default``."""
        return self.__dict__.get(name, default)

    def keys(self) -> KeysView[str]:
        """The names in this group."""
        return self.__dict__.keys()

    def items(self) -> ItemsView[str, Any]:
        """(name, value) of every setting in this group."""
        return self.__dict__.items()


CAPTURE_MODES = ("fd", "sys", "no")

SETTINGS = _Section(
    CONFIG=_Section(
        ENFORCE_KEYS_MONGO_COMPATIBLE=True,
        # Keys jsonpickle reserves ("py/object", ...) would be misread by Sacred's readers.
        ENFORCE_KEYS_JSONPICKLE_COMPATIBLE=True,
        ENFORCE_VALID_PYTHON_IDENTIFIER_KEYS=False,
        # Config keys are always strings in expkit (the config is JSON): no effect.
        ENFORCE_STRING_KEYS=False,
        ENFORCE_KEYS_NO_EQUALS=True,
        # Every call gets its own copy of mutable entries instead: no effect.
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
    COMMAND_LINE=_Section(
        # A ``with`` value that is no Python literal is an error instead of a string.
        STRICT_PARSING=False,
        # expkit's command line has no options that could be disabled: no effect.
        SHOW_DISABLED_OPTIONS=True,
    ),
    # fd capture reads pipes with select.poll, which Windows lacks: Sacred's default there too.
    CAPTURE_MODE="sys" if sys.platform == "win32" else "fd",
    DISCOVER_SOURCES="imported",
    DISCOVER_DEPENDENCIES="imported",
    DEFAULT_BEAT_INTERVAL=10.0,
)
