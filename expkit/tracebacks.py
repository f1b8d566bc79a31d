"""Tracebacks as a user reads them: the frames of their code, not expkit's or pluggy's."""

from __future__ import annotations

import os
import traceback

import pluggy

_INTERNAL: tuple[str, ...] | None = None  # expkit's and pluggy's folders, found once


def _internal_folders() -> tuple[str, ...]:
    import importlib.util

    folders = [os.path.dirname(os.path.abspath(__file__))]
    spec = importlib.util.find_spec("expkit_plugins")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        folders += [os.path.abspath(p) for p in spec.submodule_search_locations]
    folders.append(os.path.dirname(os.path.abspath(pluggy.__file__)))
    return tuple(f + os.sep for f in folders)


def _internal(filename: str) -> bool:
    global _INTERNAL
    if _INTERNAL is None:
        _INTERNAL = _internal_folders()
    return os.path.abspath(filename).startswith(_INTERNAL)


def format_user_traceback(exc: BaseException, hide: tuple[str, ...] = ()) -> list[str]:
    """The traceback of ``exc`` without expkit's and pluggy's frames (nor those naming ``hide``)."""
    tb = exc.__traceback__
    frames = [
        f
        for f in traceback.extract_tb(tb)
        if not _internal(f.filename) and not any(h in f.filename for h in hide)
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return lines
