"""SIGTERM during a run: an interrupt that reaches the run, never swallowed on the way."""

from __future__ import annotations

import os
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
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SigtermInterrupt("the process received SIGTERM")


# A child the run forks (a multiprocessing pool's worker, which its pool ends with SIGTERM)
# must end on SIGTERM as it would without expkit, not raise SigtermInterrupt with a
# traceback. The child gets the default action back before it runs any Python; SIGTERM is
# blocked across the fork, so that one sent at once waits for that and is not lost.
def _ours() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def _before_fork() -> None:
    if _ours():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _after_fork_in_parent() -> None:
    if _ours():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _after_fork_in_child() -> None:
    if _ours():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


_CURRENT = object()
_stoppable: list[DeferredInterrupts] = []  # in force now, in the main thread


class DeferredInterrupts:
    """While a run's start or end is recorded, Ctrl-C (SIGINT) and SIGTERM are only noted.

    Raised there, they would cut the recording short: a run half created, or left RUNNING
    in its stores. :meth:`restore` puts back SIGINT's handler and SIGTERM's: the one from
    before :func:`install_sigterm` (``previous``, what it returned), or by default the one
    in force now. ``stoppable``: a store's wait for a lock, before it writes, may be cut
    short (:func:`raise_deferred`); a run's start is, its end is not.
    """

    def __init__(self, previous: Any = _CURRENT, stoppable: bool = False) -> None:
        self.received: list[int] = []
        self._restore: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            previous = _NOT_INSTALLED
        if previous is _NOT_INSTALLED:
            return  # not the main thread: signals are no business of this one
        if previous is _CURRENT:
            previous = signal.getsignal(signal.SIGTERM)
        if stoppable:
            _stoppable.append(self)
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
            return SigtermInterrupt("the process received SIGTERM")
        return KeyboardInterrupt()

    def restore(self) -> None:
        for signum, handler in self._restore.items():
            # None: the handler was set outside Python; the default is the closest to it.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._restore.clear()
        if self in _stoppable:
            _stoppable.remove(self)


def raise_deferred() -> None:
    """Raise now an interrupt a stoppable deferral noted, where stopping loses nothing.

    A store that waits for another writer's lock before it writes calls this between
    waits: Ctrl-C then stops the wait (up to a minute) instead of waiting for the lock.
    The interrupt stays noted: the next store's wait stops too, and the deferral raises
    it once every store has the run's start or keeps it to send again.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for deferral in _stoppable:
        late = deferral.interrupt()
        if late is not None:
            raise late


def interrupt_deferred() -> bool:
    """Whether a stoppable deferral in force has noted an interrupt it will raise."""
    return threading.current_thread() is threading.main_thread() and any(
        d.received for d in _stoppable
    )
