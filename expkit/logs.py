"""Logging of runs: the logger a run uses, and the console handler of the command lines.

Lines below what the console shows still reach the captured output of the run going
on, so that what a run stores does not depend on the terminal's verbosity.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from expkit.errors import UsageError

if TYPE_CHECKING:
    from expkit.experiment import Experiment


def root_logger(experiment: Experiment) -> logging.Logger:
    """The logger under which a run logs: ``ex.logger`` if set, else the root logger."""
    return experiment.logger if experiment.logger is not None else logging.getLogger()


def ingredient_logger(base: logging.Logger, path: str) -> logging.Logger:
    # As in Sacred: the experiment's scopes get the base logger, an ingredient's a child.
    return base.getChild(path) if path else base


# The ``keep(text)`` of the captures of the runs going on, innermost last.
LOG_KEEPERS: list[Callable[[str], None]] = []


_LOG_FORMAT = "%(levelname)s - %(name)s - %(message)s"


class ConsoleLogHandler(logging.StreamHandler):
    """Writes log lines to the current ``sys.stderr``; lines below ``shown_level`` go only
    into the captured output of the run going on, so that what a run stores does not
    depend on what the terminal shows."""

    def __init__(self, shown_level: int = logging.NOTSET) -> None:
        super().__init__()
        self.shown_level = shown_level
        self.setFormatter(logging.Formatter(_LOG_FORMAT))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        # The stream of now, not of when logging was set up: a "sys" capture tees it.
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.shown_level:
            super().emit(record)
            return
        if not LOG_KEEPERS:
            return
        try:
            text = self.format(record) + self.terminator
            LOG_KEEPERS[-1](text)
        except Exception:
            self.handleError(record)


def log_level(level: Any) -> int:
    """A log level given as a number or a name (DEBUG, INFO, ...)."""
    text = str(level).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    number = logging.getLevelName(text.upper())
    if not isinstance(number, int):
        raise UsageError(
            f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
        )
    return number
