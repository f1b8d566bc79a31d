"""SIGTERM during a run: an interrupt that reaches the run, never swallowed on the way."""

from __future__ import annotations

import signal
import threading
from typing import Any


class SigtermInterrupt(KeyboardInterrupt):
    """Raised in the run's thread when the process receives SIGTERM.

    A ``KeyboardInterrupt``, not an ``Exception``: like Ctrl-C it goes through every
    ``except Exception`` (a store's, a library's) until it reaches the run.
    """

    STATUS = "INTERRUPTED"


_NOT_INSTALLED = object()


def install_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SigtermInterrupt("the process received SIGTERM")

    return signal.signal(signal.SIGTERM, on_sigterm)


def defer_sigterm(previous: Any) -> list[int]:
    """From now on only note a SIGTERM (in the list returned) instead of raising it."""
    received: list[int] = []
    if previous is not _NOT_INSTALLED:
        signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    return received


def restore_sigterm(previous: Any) -> None:
    if previous is not _NOT_INSTALLED:
        # None: the handler was set outside Python; the default is the closest to it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
