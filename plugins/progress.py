"""Live progress on a terminal: a line per running experiment at the bottom of the screen.

Each line shows the item's node id, how long it has run and the latest value of each metric
it logged; a run that logs with ``total`` (``_run.log_scalar("loss", v, step, total=100)``)
gets a bar and the time it has left. A session of several items has a line above them with
pytest's count (``[ 7/21]``), the percentage, the time spent and an estimate of the time left.

The lines live in the bottom rows of the terminal, kept out of the scrolling region (the
``DECSTBM`` margins that apt uses for its progress bar), so that the reporter's lines and
the runs' own output scroll above them without tearing them. Off when the output is not a
terminal, with ``-q``, and with ``--capture=no`` in this process, where a program may well
take over the terminal (pdb).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

import attrs

from expkit.pluginmanager import hookimpl

REFRESH = 0.25  # seconds between redraws
_MIN_ROWS = 6


@attrs.define
class _Entry:
    nodeid: str
    started: float
    run: Any = None  # the Run, when it runs in this process
    metrics: dict = attrs.field(factory=dict)
    step: int | None = None
    total: int | None = None


def clock(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".4g")
    text = str(value)
    return text if len(text) <= 12 else text[:11] + "…"


def item_line(entry: _Entry, now: float) -> str:
    """The live line of one running item."""
    elapsed = now - entry.started
    parts = [entry.nodeid, clock(elapsed)]
    if entry.total:
        done = min(entry.step + 1, entry.total) if entry.step is not None else 0
        width = 20
        filled = round(width * done / entry.total)
        bar = f"[{'#' * filled}{'-' * (width - filled)}] {100 * done // entry.total:3d}%"
        if 0 < done < entry.total:
            bar += f" {clock(elapsed / done * (entry.total - done))} left"
        parts.append(bar)
    parts.extend(f"{name}={_value(v)}" for name, v in entry.metrics.items())
    return "  ".join(parts)


def session_line(done: int, total: int, elapsed: float) -> str:
    """The line over the running items: ``[ 7/21]  33%  0:12  ~0:25 left``."""
    line = (
        f"[{done:>{len(str(total))}}/{total}] {100 * done // max(total, 1):3d}%  {clock(elapsed)}"
    )
    if 0 < done < total:
        line += f"  ~{clock(elapsed / done * (total - done))} left"
    return line


class LiveDisplay:
    """Draws the live lines in the bottom rows of the terminal behind ``fd``."""

    def __init__(self, fd: int, total: int, slots: int) -> None:
        self.fd = os.dup(fd)  # the terminal itself, whatever a capture does to fd 1 later
        self.total = total
        self.slots = slots
        self.done = 0
        self.start = time.monotonic()
        self.wall_start = time.time()
        self.entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # an item started or ended: redraw now
        self._thread: threading.Thread | None = None
        self._rows = 0  # rows reserved at the bottom, 0 while not drawn
        self._size: tuple[int, int] = (0, 0)

    # --- what the hooks tell it -----------------------------------------------------------

    def started(self, nodeid: str) -> None:
        """``nodeid`` began running."""
        with self._lock:
            self.entries[nodeid] = _Entry(nodeid, time.time())
        self._wake.set()

    def attach(self, run: Any) -> None:
        """``run`` runs in this process: the newest entry without one is its item."""
        with self._lock:
            for entry in reversed(list(self.entries.values())):
                if entry.run is None:
                    entry.run = run
                    return

    def update(self, status: Any) -> None:
        """News from a worker about a running item."""
        with self._lock:
            entry = self.entries.get(status.nodeid)
            if entry is None:
                entry = self.entries[status.nodeid] = _Entry(status.nodeid, status.started)
            entry.metrics = dict(status.metrics)
            entry.step, entry.total = status.step, status.total

    def finished(self, nodeid: str) -> None:
        """``nodeid`` ended (or was skipped)."""
        with self._lock:
            self.entries.pop(nodeid, None)
            self.done += 1
        self._wake.set()

    # --- drawing --------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The lines to show now."""
        now = time.time()
        with self._lock:
            entries = list(self.entries.values())
            for entry in entries:
                if entry.run is not None:
                    entry.metrics = entry.run.latest_metrics()
                    progress = entry.run.progress
                    if progress is not None:
                        entry.step, entry.total = progress[1], progress[2]
            done = self.done
        lines = []
        if self.total > 1:
            lines.append(session_line(done, self.total, time.monotonic() - self.start))
        shown = entries[: self.slots]
        lines += ["  " + item_line(e, now) if self.total > 1 else item_line(e, now) for e in shown]
        if len(entries) > len(shown):
            lines[-1] = f"  ... and {len(entries) - len(shown) + 1} more running"
        return lines

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:
            self._stop.set()  # the terminal is gone

    def _reserve(self, rows: int, size: tuple[int, int]) -> str:
        """Make the bottom ``rows`` rows of the screen stay put while the rest scrolls."""
        height = size[1]
        # Room first (the cursor may be on the last rows), then the margins, which move the
        # cursor home: it is saved and put back around them.
        return "\n" * rows + f"\x1b[{rows}A\x1b7\x1b[1;{height - rows}r\x1b8"

    def _release(self) -> str:
        if not self._rows:
            return ""
        height = self._size[1]
        text = f"\x1b7\x1b[r\x1b8\x1b7\x1b[{height - self._rows + 1};1H\x1b[J\x1b8"
        self._rows = 0
        return text

    def draw(self) -> None:
        """Redraw the live lines."""
        try:
            size = tuple(os.get_terminal_size(self.fd))
        except OSError:
            return
        columns, height = size
        lines = self.lines()
        rows = (1 if self.total > 1 else 0) + self.slots
        rows = min(rows, max(height // 3, 1))
        lines = lines[:rows]
        text = ""
        if size != self._size or rows != self._rows:
            text += self._release()
            if height < _MIN_ROWS:
                self._write(text)
                return
            text += self._reserve(rows, size)
            self._size, self._rows = size, rows
        text += "\x1b7"
        for i in range(rows):
            line = lines[i] if i < len(lines) else ""
            text += f"\x1b[{height - rows + 1 + i};1H\x1b[2K{line[: columns - 1]}"
        text += "\x1b8"
        self._write(text)

    def begin(self) -> None:
        """Reserve the rows and start redrawing."""
        sys.stdout.flush()
        atexit.register(self.end)
        self.draw()
        self._thread = threading.Thread(target=self._loop, name="expkit-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(REFRESH)
            self._wake.clear()
            if not self._stop.is_set():
                self.draw()

    def end(self) -> None:
        """Stop redrawing and give the rows back to the scrolling text."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2 * REFRESH + 1.0)
        self._write(self._release())
        atexit.unregister(self.end)


# --- hooks -----------------------------------------------------------------------------------


def _wanted(config: Any) -> bool:
    option = config.option
    if config.command != "run" or option.collect_only:
        return False
    if getattr(option, "verbose", 0) - getattr(option, "quiet", 0) < 0:
        return False
    if not sys.stdout.isatty() or os.environ.get("TERM") in (None, "", "dumb"):
        return False
    parallel = getattr(option, "numprocesses", None) or getattr(option, "dask", None)
    capture = option.capture or config.settings.capture
    return bool(parallel) or capture != "no"


def _slots(option: Any) -> int:
    if getattr(option, "dask", None) and option.dask != "local":
        return 4  # the cluster decides; show a few
    return getattr(option, "numprocesses", None) or (2 if getattr(option, "dask", None) else 1)


def _display(config: Any) -> LiveDisplay | None:
    return config.pluginmanager.get_plugin("progressdisplay")


@hookimpl
def expkit_configure(config: Any) -> None:
    if _wanted(config):
        config.pluginmanager.register(_Hooks(config), "progressdisplay")


class _Hooks:
    """The display's hooks, registered only when it is on."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.display: LiveDisplay | None = None

    @hookimpl(wrapper=True)
    def expkit_runtestloop(self, session: Any) -> Any:
        todo = [item for item in session.items if item.skip is None]
        if not todo:
            return (yield)
        self.display = LiveDisplay(
            sys.stdout.fileno(), len(session.items), _slots(self.config.option)
        )
        self.display.done = len(session.items) - len(todo)
        self.display.begin()
        try:
            return (yield)
        finally:
            self.display.end()

    @hookimpl
    def expkit_run_logstart(self, nodeid: str) -> None:
        if self.display is not None:
            self.display.started(nodeid)

    @hookimpl
    def expkit_run_started(self, run: Any) -> None:
        if self.display is not None:
            self.display.attach(run)

    @hookimpl
    def expkit_run_livestatus(self, status: Any) -> None:
        if self.display is not None:
            self.display.update(status)

    @hookimpl
    def expkit_run_logreport(self, report: Any) -> None:
        if self.display is not None and report.status != "SKIPPED":
            self.display.finished(report.nodeid)
