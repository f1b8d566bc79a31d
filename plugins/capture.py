"""Capture what a run writes to stdout and stderr, while the console still shows it.

Modes: ``no`` captures nothing; ``sys`` replaces ``sys.stdout`` and ``sys.stderr`` by tees
(what Python code writes to them, not what goes to their ``.buffer`` or to the descriptors);
``fd`` redirects file descriptors 1 and 2 into pipes, so output from C code and child
processes is captured too.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import threading
import time
from typing import Any, TextIO

from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl
from expkit.settings import CAPTURE_MODES

# How long stop() waits for the end of a pipe that a still-running child process holds open.
_DRAIN_TIMEOUT = 1.0
# Pipes are grown to this (four times Linux's default) where the system allows: the reader
# can then wait longer between reads without holding up a fast writer.
_PIPE_SIZE = 1 << 18
# How long a pipe's reader lets writes pile up before it reads them: short enough for the
# console to look live, long enough to take thousands of tiny writes in one read.
_COALESCE = 0.01

# Captures that are on, oldest first. Runs in threads may stop in any order, so a capture
# that stops under a later one hands what it saved to that one instead of putting it back.
_ACTIVE_LOCK = threading.RLock()
_ACTIVE_SYS: list[SysCapture] = []
_ACTIVE_FD: list[FdCapture] = []


def _next_active(active: list, capture: Any) -> Any:
    """Return the capture started right after ``capture`` that is still on, if any."""
    index = active.index(capture) + 1
    return active[index] if index < len(active) else None


class _Buffer:
    """Text collected by a capture, safe to fill and read from different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[str] = []
        self.open = True

    def add(self, text: str) -> None:
        with self._lock:
            if self.open and text:
                self._chunks.append(text)

    def take(self) -> str:
        with self._lock:
            chunks, self._chunks = self._chunks, []
        return "".join(chunks)

    def close(self) -> None:
        with self._lock:
            self.open = False


class NoCapture:
    """Captures nothing."""

    def start(self) -> None:
        """Do nothing."""

    def read(self) -> str:
        """Return ``""``."""
        return ""

    def keep(self, text: str) -> None:
        """Do nothing."""

    def stop(self) -> None:
        """Do nothing."""


class _Tee:
    """A text stream that writes to ``stream`` and, while capturing, to ``buffer``."""

    def __init__(self, stream: TextIO | None, buffer: _Buffer) -> None:
        self._stream = stream
        self._buffer = buffer

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._buffer.add(text)
        if self._stream is not None:
            self._stream.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        # Everything else (encoding, isatty, fileno, buffer, ...) is the original stream's.
        return getattr(self.__dict__.get("_stream"), name)


class SysCapture:
    """Tees ``sys.stdout`` and ``sys.stderr``: captures what Python code writes to them."""

    def __init__(self, names: tuple[str, ...] = ("stdout", "stderr"), buffer: Any = None) -> None:
        self._names = names
        self._buffer = buffer if buffer is not None else _Buffer()
        self._saved: list[Any] | None = None
        self._tees: list[_Tee] = []

    def start(self) -> None:
        """Replace ``sys.stdout`` and ``sys.stderr`` by tees."""
        with _ACTIVE_LOCK:
            if self._saved is not None:
                return
            self._saved = [getattr(sys, name) for name in self._names]
            self._tees = [_Tee(stream, self._buffer) for stream in self._saved]
            for name, tee in zip(self._names, self._tees):
                setattr(sys, name, tee)
            _ACTIVE_SYS.append(self)

    def read(self) -> str:
        """Return the text written since the last read."""
        return self._buffer.take()

    def keep(self, text: str) -> None:
        """Add ``text`` to the captured output without showing it on the console."""
        self._buffer.add(text)

    def stop(self) -> None:
        """Put the original streams back, even if the run replaced the tees meanwhile."""
        with _ACTIVE_LOCK:
            if self._saved is None:
                return
            # Tees kept elsewhere (a logging handler made during the run) go on writing to the
            # console, but no longer into this capture.
            self._buffer.close()
            later = _next_active(_ACTIVE_SYS, self)
            if later is None or later._names != self._names:
                for name, stream in zip(self._names, self._saved):
                    setattr(sys, name, stream)
            else:
                # A capture started after this one is still on: it wraps this one's tees, and
                # must write to, and put back, what this one had found instead.
                for i, tee in enumerate(self._tees):
                    if later._saved[i] is tee:  # type: ignore[index]
                        later._saved[i] = self._saved[i]  # type: ignore[index]
                        later._tees[i]._stream = self._saved[i]
            _ACTIVE_SYS.remove(self)
            self._saved = None


def _flush_std_streams() -> None:
    """Push the output buffered by Python and by C's stdio to the file descriptors."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        import ctypes  # only here: importing it costs more than the rest of this module

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to ``fd``; return False when ``fd`` cannot be written to."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # A non-blocking console: wait until it takes more.
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return False
        view = view[written:]
    return True


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _PipeReader:
    """Reads one pipe in a thread: forwards the bytes to the console, keeps the text.

    While writes keep coming, the thread waits a moment before each read, so that many small
    writes (``print(..., flush=True)``, ``PYTHONUNBUFFERED``) are taken in one read instead of
    waking it, and contending for the GIL, once each. Text is handed to the shared buffer a
    complete line at a time (or when the capture is read), so that lines from two pipes do not
    cut into each other.
    """

    def __init__(
        self,
        fd: int,
        read_fd: int,
        console_fd: int | None,
        buffer: _Buffer,
        readers: list[_PipeReader],
        lock: threading.Lock,
    ) -> None:
        self.fd = fd  # the first descriptor redirected into this pipe
        self.pipe = _identity(read_fd)  # both ends of a pipe are the same file
        self._read_fd = read_fd
        self._console_fd = console_fd
        self._buffer = buffer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The capture's readers, this one included, and the lock they all take to move bytes
        # out of their pipes, so that no two threads reorder them. Only this reader's thread
        # writes to its console, outside the lock: a console that blocks (a paused terminal,
        # a slow pipe) holds up this reader alone, never another one or a heartbeat.
        self._readers = readers
        self._lock = lock
        self._unforwarded: list[bytes] = []  # taken from the pipe, not yet on the console
        self._partial = ""  # decoded text after the last line end, not yet in the buffer
        self._capturing = True
        self._ended = False  # the pipe reached its end
        self._closed = False  # the thread closed its descriptors
        self.since: float | None = None  # when the bytes in the pipe began to arrive, if known
        self._hurry = threading.Event()  # set by hurry(): read without waiting
        self._capacity = _grow(read_fd)
        os.set_blocking(read_fd, False)
        # Another reader's thread that takes this pipe's bytes rings here, so that this thread
        # wakes up to forward them even though the pipe is empty again.
        self._bell_r, self._bell_w = os.pipe()
        os.set_blocking(self._bell_r, False)
        os.set_blocking(self._bell_w, False)
        self._poller = select.poll()
        self._poller.register(read_fd, select.POLLIN)
        self._poller.register(self._bell_r, select.POLLIN)
        with lock:
            readers.append(self)
        name = f"expkit-capture-fd{fd}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        half = self._capacity // 2
        wait = 0.0
        last = time.monotonic()
        try:
            while not self._ended:
                self._poller.poll()
                self.since = woken = time.monotonic()
                if woken - last > _COALESCE:
                    # After a quiet spell read at once: a lone line shows without delay, and
                    # keeps its place among the lines of the other pipe.
                    wait = 0.0
                elif wait:
                    self._hurry.wait(wait)
                taken = self._drain()
                now = time.monotonic()
                if taken > 3 * half // 2:
                    wait = 0.0  # the pipe was about full and may have held the writer back
                else:
                    # While writes keep coming, wait a little longer each time, up to
                    # _COALESCE, but not so long that the pipe would fill up.
                    rate = taken / max(now - last, 1e-6)
                    wait = min(max(2 * wait, _COALESCE / 16), _COALESCE, half / max(rate, 1.0))
                last = now
        finally:
            self.flush(final=True)
            with self._lock:
                # Closed under the lock: other threads ring the bell and retarget the console
                # under it, and a closed number could be reused by any open() meanwhile.
                self._ended = self._closed = True
                for fd in (self._read_fd, self._bell_r, self._bell_w):
                    _close_quietly(fd)
                chunks, self._unforwarded = self._unforwarded, []
            self._forward(chunks)
            with self._lock:
                if self._console_fd is not None:
                    _close_quietly(self._console_fd)
                    self._console_fd = None

    def _drain(self) -> int:
        """Keep what the capture's pipes hold now, forward this pipe's; return its bytes.

        The pipe whose bytes have waited longest comes first, so that a line logged to
        stderr lands after the lines printed to stdout before it, though those waited in
        their pipe to be read together.
        """
        with self._lock:
            for reader in sorted(self._readers, key=_waiting_since):
                chunks = reader._take()
                reader._unforwarded += chunks
                if chunks and reader is not self and not reader._closed:
                    reader._ring()
            chunks, self._unforwarded = self._unforwarded, []
            while True:  # silence the bell: what it rang for is in hand
                try:
                    os.read(self._bell_r, 1 << 10)
                except OSError:
                    break
        self._forward(chunks)
        return sum(map(len, chunks))

    def take_for_console(self) -> None:
        """Keep what the pipe holds and the unfinished line, and have the thread forward the
        bytes; called by another thread with the lock held."""
        chunks = self._take()
        if chunks:
            self._unforwarded += chunks
            if not self._closed:
                self._ring()
        if self._capturing and self._partial:
            self._buffer.add(self._partial)
            self._partial = ""

    def _ring(self) -> None:
        try:
            os.write(self._bell_w, b"!")
        except OSError:
            pass  # full, or closed because the thread ended: it has been rung already

    def _forward(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` to the console; only this reader's thread calls it."""
        for data in chunks:
            console = self._console_fd
            if console is not None and not _write_all(console, data):
                _close_quietly(console)  # the console is gone; keep capturing all the same
                self._console_fd = None

    def _take(self) -> list[bytes]:
        """Keep what this pipe holds and return it, to forward; called with the lock held."""
        taken: list[bytes] = []
        while not self._ended:
            try:
                data = os.read(self._read_fd, self._capacity)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._ended = True
                break
            taken.append(data)
            self._add(data)
            if len(data) < self._capacity:
                break  # a read takes all the pipe holds: it is empty now
        self.since = None
        return taken

    def _add(self, data: bytes) -> None:
        if not self._capturing:
            return
        text = self._decoder.decode(data)
        end = text.rfind("\n") + 1
        if end:
            self._buffer.add(self._partial + text[:end])
            self._partial = text[end:]
        else:
            self._partial += text

    def flush(self, final: bool = False) -> None:
        """Hand the unfinished line to the buffer; ``final``: an incomplete character too."""
        with self._lock:
            if not self._capturing:
                return
            if final:
                self._partial += self._decoder.decode(b"", final=True)
                self._capturing = False
            self._buffer.add(self._partial)
            self._partial = ""

    def console(self) -> tuple[int, int] | None:
        """The file this reader forwards to."""
        with self._lock:
            return None if self._console_fd is None else _identity(self._console_fd)

    def retarget(self, fd: int | None) -> None:
        """Forward to the file behind ``fd`` from now on (``None``: to nowhere)."""
        with self._lock:
            if self._console_fd is not None:
                # dup2 swaps the file under the number the thread writes to, atomically.
                _point(self._console_fd, fd)

    def hurry(self) -> None:
        """Read from now on as soon as anything comes: the capture is stopping."""
        self._hurry.set()

    def finish(self, deadline: float) -> None:
        """Wait until ``deadline`` (a ``time.monotonic()``) for the end of the pipe."""
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            # A child still holds the pipe open. Leave the thread to forward its output to the
            # console until it ends, so the child is not killed by a broken pipe.
            self.flush(final=True)


def _waiting_since(reader: _PipeReader) -> tuple[bool, float]:
    """Sorts readers by how long their bytes have waited, longest first, unknown last."""
    return reader.since is None, reader.since or 0.0


def _grow(pipe: int) -> int:
    """Grow ``pipe`` to ``_PIPE_SIZE`` if allowed; return how many bytes it holds now."""
    import fcntl  # only fd mode needs it

    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (AttributeError, OSError):
        pass  # not Linux, or the user's pipes already hold all the kernel allows them
    try:
        return fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):
        return 1 << 14  # no way to ask (macOS, BSD): the smallest pipes they make


def _identity(fd: int) -> tuple[int, int] | None:
    """The file behind ``fd`` (the terminal, a pipe, ...), or None when ``fd`` is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _point(fd: int, target: int | None) -> None:
    """Make ``fd`` refer to the file behind ``target`` (``None``: the null device)."""
    if target is not None:
        os.dup2(target, fd)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _save(fd: int) -> int | None:
    """Return a copy of ``fd``, or None when it is closed (then hold its number meanwhile)."""
    try:
        return os.dup(fd)
    except OSError:
        pass
    # Occupy the number, or os.pipe() could hand it out and the redirection would clobber it.
    placeholder = os.open(os.devnull, os.O_WRONLY)
    if placeholder != fd:
        os.dup2(placeholder, fd)
        os.close(placeholder)
    return None


class FdCapture:
    """Redirects file descriptors 1 and 2 into pipes: captures C code and child processes too.

    When stdout and stderr go to the same place (a terminal, ``2>&1``) they share one pipe,
    which keeps their order; otherwise each has its own pipe, so that the console still gets
    each stream where it was sent, and their order is only as good as the reads.
    """

    def __init__(self) -> None:
        self._buffer = _Buffer()
        self._saved: dict[int, int | None] = {}
        self._readers: list[_PipeReader] = []
        self._streams: SysCapture | None = None

    def start(self) -> None:
        """Redirect descriptors 1 and 2 into pipes read by background threads."""
        with _ACTIVE_LOCK:
            if self._saved:
                return
            _flush_std_streams()
            self._saved = {fd: _save(fd) for fd in (1, 2)}
            out, err = self._saved[1], self._saved[2]
            shared = out is not None and err is not None and _identity(out) == _identity(err)
            readers: list[_PipeReader] = []
            lock = threading.Lock()
            for fds in [[1, 2]] if shared else [[1], [2]]:
                read_fd, write_fd = os.pipe()
                saved = self._saved[fds[0]]
                # The reader owns its copy of the console descriptor and closes it at the end.
                console = os.dup(saved) if saved is not None else None
                _PipeReader(fds[0], read_fd, console, self._buffer, readers, lock)
                for fd in fds:
                    os.dup2(write_fd, fd)
                os.close(write_fd)
            self._readers = readers
            _ACTIVE_FD.append(self)
            # Python streams that do not write to descriptor 1 or 2 (pytest's capture, a
            # notebook's output) are teed as well, or their text would be missed.
            names = tuple(
                name
                for name, fd in (("stdout", 1), ("stderr", 2))
                if not _writes_to(getattr(sys, name), fd)
            )
        if names:
            self._streams = SysCapture(names, self._buffer)
            self._streams.start()

    def read(self) -> str:
        """Return the text the readers took since the last read (they lag by a few ms)."""
        if self._saved:
            # Let Python's buffered output reach the pipe in time for the next read.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        # Not _drain(): reading the pipes here would make the heartbeat forward to the
        # console, and a console that blocks would stop the heartbeats.
        for reader in self._readers:
            reader.flush()
        return self._buffer.take()

    def keep(self, text: str) -> None:
        """Add ``text`` to the captured output without showing it on the console.

        What was written before it is taken from the pipes first, so that it keeps its place.
        """
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        readers = self._readers
        if not readers:
            self._buffer.add(text)
            return
        with readers[0]._lock:  # the lock every reader of this capture shares
            for reader in sorted(readers, key=_waiting_since):
                reader.take_for_console()
            self._buffer.add(text)

    def stop(self) -> None:
        """Flush, put the original descriptors back and collect what is left in the pipes."""
        if self._streams is not None:
            streams, self._streams = self._streams, None
            streams._buffer = _Buffer()  # this capture's buffer must stay open for the pipes
            streams.stop()
        with _ACTIVE_LOCK:
            if not self._saved:
                return
            _flush_std_streams()
            later = _next_active(_ACTIVE_FD, self)
            if later is None:
                for fd, saved in self._saved.items():
                    if saved is None:
                        os.close(fd)  # it was closed before
                    else:
                        os.dup2(saved, fd)
            else:
                self._hand_over(later)
            for saved in self._saved.values():
                if saved is not None:
                    os.close(saved)
            _ACTIVE_FD.remove(self)
            self._saved = {}
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.hurry()
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        for reader in readers:
            reader.finish(deadline)
        self._buffer.close()

    def _hand_over(self, later: FdCapture) -> None:
        """Make ``later``, which writes into this capture's pipes, use what they replaced."""
        pipes = {reader.pipe for reader in self._readers}
        for reader in later._readers:
            if reader.console() in pipes:
                reader.retarget(self._saved[reader.fd])
        for fd, theirs in later._saved.items():
            if theirs is None or _identity(theirs) not in pipes:
                continue
            if self._saved[fd] is None:
                os.close(theirs)
                later._saved[fd] = None
            else:
                os.dup2(self._saved[fd], theirs)  # type: ignore[arg-type]


def _writes_to(stream: Any, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


_CAPTURES = {"fd": FdCapture, "sys": SysCapture, "no": NoCapture}


@hookimpl(trylast=True)
def expkit_make_capture(mode: str) -> Any:
    """Return the capture for ``mode``: ``fd``, ``sys`` or ``no``."""
    factory = _CAPTURES.get(mode)
    if factory is None:
        modes = ", ".join(CAPTURE_MODES)
        raise UsageError(f"unknown capture mode {mode!r}; choose one of: {modes}")
    if mode == "fd" and not hasattr(select, "poll"):
        raise UsageError("capture mode 'fd' needs select.poll, which Windows lacks: use 'sys'")
    return factory()
