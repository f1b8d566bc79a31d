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


class DeferredInterrupts:
    """While a run's end is recorded, Ctrl-C (SIGINT) and SIGTERM are only noted.

    Raised there, they would cut the recording short and leave the run RUNNING in its
    stores. :meth:`restore` puts back SIGINT's handler and SIGTERM's from before
    :func:`install_sigterm` (``previous``, what it returned).
    """

    def __init__(self, previous: Any) -> None:
        self.received: list[int] = []
        self._restore: dict[int, Any] = {}
        if previous is _NOT_INSTALLED:
            return  # not the main thread: signals are no business of this one
        self._restore[signal.SIGTERM] = previous
        signal.signal(signal.SIGTERM, self._note)
        sigint = signal.getsignal(signal.SIGINT)
        if sigint is not signal.SIG_IGN:  # ignored (a background job): it stays ignored
            self._restore[signal.SIGINT] = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)

    def interrupt(self) -> KeyboardInterrupt | None:
        """What the first signal noted would have raised; None if none came."""
        if not self.received:
            return None
        if self.received[0] == signal.SIGTERM:
            return SigtermInterrupt("the process received SIGTERM as the run ended")
        return KeyboardInterrupt()

    def restore(self) -> None:
        for signum, handler in self._restore.items():
            # None: the handler was set outside Python; the default is the closest to it.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._restore.clear()
