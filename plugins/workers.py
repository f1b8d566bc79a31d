"""``-n N|auto``: run the items in long-lived local worker processes, as pytest-xdist does.

Each worker is started once (forked from a server that imported expkit and its plugins,
where the platform has one; ``expkit tune`` forks its own, see :func:`start_workers`); it
loads the plugins and reads the command line as the driver did, imports each experiment
file once, and runs the items it is handed one after another,
into the stores, with output captured as usual. The driver hands the next item to whichever
worker is free. A worker that dies (a signal, ``os._exit``, the OOM
killer) has its item reported and stored as FAILED and is replaced. Ctrl-C, or SIGTERM to
the driver, stops the handing out, interrupts the running items (stored as INTERRUPTED) and
exits with 2.

:class:`WorkerSession` is also what a Dask worker runs points with (``--dask``); what the
driver sends a worker (:mod:`expkit.remote`) is imported only when ``-n`` or ``--dask`` is used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import UsageError
from expkit.nodes import CollectError, Item, LiveStatus, RunReport
from expkit.pluginmanager import hookimpl
from expkit.signals import DeferredInterrupts, install_sigterm

if TYPE_CHECKING:
    from expkit.remote import PointSpec, SessionSpec, ShippedFile

# How often a worker sends the live status of its running item.
STATUS_INTERVAL = 1.0
# How long the driver waits, after Ctrl-C, for the workers to store their runs as interrupted.
INTERRUPT_GRACE = 10.0

# How the item running in this process asks its driver something (see ask_driver).
_asker: Any = None


def set_asker(asker: Any) -> Any:
    """Make ``asker(question) -> answer`` what :func:`ask_driver` calls; return the one before."""
    global _asker
    previous, _asker = _asker, asker
    return previous


def ask_driver(question: Any) -> Any:
    """From the running item: ask the driver of its session ``question`` and wait for the answer.

    ``None`` when nobody drives this process, or the driver is gone. ``expkit tune`` asks
    its driver whether a trial is to be pruned.
    """
    return None if _asker is None else _asker(question)


def point_spec(item: Item, rootdir: Path) -> PointSpec:
    """The :class:`~expkit.remote.PointSpec` of ``item``."""
    from expkit.remote import PointSpec

    path = item.path.resolve()
    try:
        relative = path.relative_to(rootdir.resolve()).as_posix()
    except ValueError:
        relative = path.as_posix()
    return PointSpec(relative, item.originalname, item.nodeid, dict(item.params), item.sweep)


def session_spec(config: Any, files: tuple[ShippedFile, ...] = ()) -> SessionSpec:
    """The :class:`~expkit.remote.SessionSpec` of the driver's ``config``."""
    from expkit.remote import SessionSpec

    urls: tuple[str, ...] = ()
    if not config.option.unobserved:
        from expkit_plugins.session import store_urls

        urls = tuple(_absolute(u, config.invocation_dir) for u in store_urls(config))
    return SessionSpec(
        args=tuple(config.args),
        invocation_dir=str(config.invocation_dir),
        rootdir=str(config.rootdir),
        store_urls=urls,
        files=files,
    )


def _absolute(url: str, base: Path) -> str:
    """``url`` with its file's or folder's path made absolute against ``base``.

    A store given relative to where expkit was started must mean the same on a worker: a
    Dask worker runs in a folder of its own, and a worker opens its stores before it changes
    to the run's folder. A plain path, ``file://``, ``tinydb://`` and ``sqlite:///`` name
    files; the other schemes name servers, left as they are.
    """
    scheme, sep, rest = url.partition("://")
    kind = scheme.lower().partition("+")[0]
    if not sep:
        return _under(base, url)
    if kind in ("file", "tinydb") and rest:
        return f"{scheme}://{_under(base, rest)}"
    database, mark, query = rest.partition("?")
    # sqlite:///rel.db is relative, sqlite:////abs.db absolute; the path is percent-encoded.
    if kind == "sqlite" and database.startswith("/") and not database.startswith("//"):
        name = urllib.parse.unquote(database[1:])
        if name and name != ":memory:" and not name.startswith("file:"):
            path = urllib.parse.quote(_under(base, name))
            return f"{scheme}:///{path}{mark}{query}"  # the path begins with /: four
    return url


def _under(base: Path, path: str) -> str:
    return str((base / os.path.expanduser(path)).resolve())


class _Tracker:
    """A plugin in a worker that follows its running run (for live status and the run id)."""

    def __init__(self, on_start: Any = None) -> None:
        self.run: Any = None
        self.on_start = on_start

    @hookimpl
    def expkit_run_started(self, run: Any) -> None:
        self.run = run
        if self.on_start is not None:
            self.on_start(run)

    @hookimpl
    def expkit_run_completed(self) -> None:
        self.run = None

    @hookimpl
    def expkit_run_failed(self) -> None:
        self.run = None

    @hookimpl
    def expkit_run_interrupted(self) -> None:
        self.run = None


class WorkerSession:
    """The session of a worker process: the driver's command line, items run on demand."""

    def __init__(self, spec: SessionSpec, root: Path | None = None, on_start: Any = None) -> None:
        from expkit.cli import make_config
        from expkit.pluginmanager import set_plugin_manager
        from expkit.run import store_for_url
        from expkit_plugins.session import Session, configure_logging, run_updates

        self.spec = spec
        self.root = Path(root or spec.rootdir)
        invocation = Path(spec.invocation_dir)
        if self.root != Path(spec.rootdir):  # the files were shipped: map the folders on
            try:
                invocation = self.root / invocation.relative_to(spec.rootdir)
            except ValueError:
                invocation = self.root
        self.tracker = _Tracker(on_start)
        config = make_config(
            [spec.command, *spec.args], plugins=[self.tracker], invocation_dir=invocation
        )
        pm = config.pluginmanager
        set_plugin_manager(pm)
        configure_logging(getattr(config.option, "verbose", 0))
        pm.hook.expkit_configure.call_historic(kwargs={"config": config})
        if pm.get_plugin("terminalreporter") is not None:
            pm.unregister(name="terminalreporter")  # the driver reports
        # The driver expanded the sweeps and chose the items; a worker runs what it is given.
        config.option.sweep_plan = None
        self.config = config
        self.session = Session(config)
        config.session = self.session
        self.session.updates = run_updates(config)
        self.session.store_urls = list(spec.store_urls)
        self.session.stores = [store_for_url(pm, url) for url in spec.store_urls]
        self._files: dict[Path, dict[str, Item] | str] = {}

    def item(self, point: PointSpec) -> Item | str:
        """The item to run for ``point``, or why there is none."""
        file = (self.root / point.path).resolve()
        if file not in self._files:
            found: dict[str, Item] = {}
            errors = []
            hook = self.config.pluginmanager.hook
            for nodes in hook.expkit_collect_file(path=file, config=self.config):
                for node in nodes or ():
                    if isinstance(node, CollectError):
                        errors.append(node.message.strip().splitlines()[-1])
                    else:
                        found[node.name] = node
            self._files[file] = found if found or not errors else f"cannot collect: {errors[0]}"
        found_or_error = self._files[file]
        if isinstance(found_or_error, str):
            return found_or_error
        base = found_or_error.get(point.name)
        if base is None:
            return f"no experiment {point.name!r} in {point.path} on this worker"
        name = point.name + point.nodeid[len(point.nodeid.partition("[")[0]) :]
        return attrs.evolve(
            base, nodeid=point.nodeid, name=name, params=dict(point.params), sweep=point.sweep
        )

    def run(self, point: PointSpec, meta: dict | None = None) -> RunReport:
        """Run ``point`` here; never raises for the experiment's sake."""
        from expkit_plugins.session import run_item

        item = self.item(point)
        if isinstance(item, str):
            return RunReport(point.nodeid, "ERROR", 0.0, message=item)
        return run_item(self.session, item, {**point.meta, **(meta or {})})


# --- the worker process ------------------------------------------------------------------


def worker_main(conn: Any) -> None:
    """The loop of a worker process: run what the driver sends over the connection ``conn``."""
    lock = threading.Lock()
    current: dict[str, Any] = {}

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    def started(run: Any) -> None:
        current["started"] = time.time()
        send(("started", current["nodeid"], run._id))

    def ask(question: Any) -> Any:
        # Called in the run's thread, the only one that reads from the driver while it runs.
        try:
            send(("ask", question))
            while True:
                message = conn.recv()
                if message[0] == "answer":
                    return message[1]
        except (EOFError, OSError):
            return None  # the driver is gone: the run goes on, its end is stored as usual

    set_asker(ask)
    try:
        spec = conn.recv()
        session = WorkerSession(spec, on_start=started)
        threading.Thread(target=_send_status, args=(session, current, send), daemon=True).start()
        send(("ready",))
        while True:
            message = conn.recv()
            if message[0] != "run":
                break
            point = message[1]
            current["nodeid"] = point.nodeid
            report = session.run(point)
            current.clear()
            send(("report", report))
            if session.session.interrupted:
                break
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped by the driver, or the driver is gone
    finally:
        conn.close()


def _send_status(session: WorkerSession, current: dict, send: Any) -> None:
    while True:
        time.sleep(STATUS_INTERVAL)
        run, nodeid, started = session.tracker.run, current.get("nodeid"), current.get("started")
        if run is None or nodeid is None or started is None:
            continue
        try:
            send(("status", LiveStatus.of(nodeid, started, run)))
        except Exception:
            return  # the driver is gone


# --- the driver ------------------------------------------------------------------------


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.getgroup("sweeps", "sweeps and parallel runs").addoption(
        "-n",
        "--numprocesses",
        dest="numprocesses",
        default=None,
        metavar="N",
        help="run in N local worker processes (auto: one per core)",
    )


def worker_count(value: str | None) -> int | None:
    """``-n``'s value as a number of workers; ``auto`` is one per usable core."""
    if value is None:
        return None
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"-n takes a number of workers (1 or more) or 'auto', not {value!r}")
    return int(value)


@hookimpl
def expkit_configure(config: Any) -> None:
    if config.command in ("run", "tune"):
        config.option.numprocesses = worker_count(getattr(config.option, "numprocesses", None))


@hookimpl(tryfirst=True)
def expkit_runtestloop(session: Any) -> bool | None:
    n = session.config.option.numprocesses
    if n is None or getattr(session.config.option, "dask", None):
        return None
    Driver(session, n).run()
    return True


class _Worker:
    """The driver's handle on one worker process."""

    def __init__(
        self, number: int, spec: SessionSpec, context: Any = None, siblings: Any = ()
    ) -> None:
        import tempfile

        self.number = number
        self.item: Item | None = None
        self.run_id: Any = None
        self.item_output = 0  # where the output of its item begins in its log
        self.ready = False
        fd, self._log_path = tempfile.mkstemp(prefix=f"expkit-worker{number}-", suffix=".log")
        self.log = os.fdopen(fd, "rb")
        context = context or _context()
        self.conn, theirs = context.Pipe()
        # A worker forked from the driver holds copies of the driver's ends of its own
        # socket and its elder siblings': it closes them, or it would wait forever on a
        # socket it keeps open itself after the driver is gone.
        inherited = []
        if context.get_start_method() == "fork":
            handles = (*siblings, self)
            inherited = [fd for w in handles for fd in (w.conn.fileno(), w.log.fileno())]
        self.proc = context.Process(
            target=_worker_process,
            args=(theirs, self._log_path, spec.invocation_dir, dict(os.environ), inherited),
            name=f"expkit-worker-{number}",
        )
        self.proc.start()
        theirs.close()
        self.conn.send(spec)
        self.spec = spec
        self._asked_to_stop = False

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the worker wrote to its stdout and stderr."""
        return "\n".join(self.output_since(-16384).splitlines()[-lines:])

    def log_size(self) -> int:
        """How much the worker wrote so far (where what it writes next begins)."""
        try:
            return os.fstat(self.log.fileno()).st_size
        except OSError:
            return 0

    def output_since(self, offset: int, limit: int = 1 << 20) -> str:
        """What the worker wrote from ``offset`` on (negative: the last ``-offset`` bytes), up
        to its last ``limit`` bytes."""
        size = self.log_size()
        start = max(size + offset if offset < 0 else offset, size - limit, 0)
        try:
            data = os.pread(self.log.fileno(), size - start, start)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def ask_to_stop(self) -> None:
        """Ask the worker to end, without waiting for it."""
        if not self._asked_to_stop:
            self._asked_to_stop = True
            try:
                self.conn.send(("stop",))
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to end, and make sure it does."""
        self.ask_to_stop()
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
        self.close()

    def close(self) -> None:
        """Let go of the ended worker's socket and log."""
        self.conn.close()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log_path)


# Where workers come from: a fork server that imported expkit and its plugins once (on
# Linux and macOS), so that starting n workers costs one import, not n; else new interpreters.
_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        from expkit.pluginmanager import builtin_plugin_modules

        try:
            _CONTEXT = multiprocessing.get_context("forkserver")
        except ValueError:  # Windows
            _CONTEXT = multiprocessing.get_context("spawn")
        else:
            preload = ["expkit.cli", "expkit.run", *builtin_plugin_modules()]
            _CONTEXT.set_forkserver_preload(preload)
    return _CONTEXT


def _worker_process(
    conn: Any, log_path: str, cwd: str, environ: dict[str, str], inherited: list[int]
) -> None:
    # As a new `python -c` started by the driver would be: in its folder, with its
    # environment, its own session (Ctrl-C at the terminal reaches the driver alone, which
    # interrupts the workers running something), its output in its log.
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    if hasattr(os, "setsid"):  # not on Windows
        os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    if "" not in sys.path:
        sys.path.insert(0, "")
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    with contextlib.suppress(OSError):  # the driver reads it by its open handle
        os.unlink(log_path)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # Each line in the log as it is printed, as on a terminal: a worker that is killed takes
    # no buffered output with it, and its point is stored with what it printed.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)
    worker_main(conn)


def start_workers(n: int, spec: SessionSpec) -> Callable[[], list[_Worker]]:
    """Start ``n`` workers of ``spec`` ahead of a :class:`Driver`, which adopts those of its spec.

    The caller goes on (``expkit tune`` imports Optuna and opens its study meanwhile) and
    calls the returned function for the workers when it needs them. On Linux, in a process
    with no other thread, they are forked from the caller, now: they skip the fork server's
    start (a new interpreter importing expkit: a quarter of a second of a core, which the
    caller's own start-up would wait behind on a small machine). Elsewhere they are started
    from a thread, as the driver would start them.
    """
    workers: list[_Worker] = []
    if _may_fork():
        import multiprocessing

        fork = multiprocessing.get_context("fork")
        with contextlib.suppress(Exception):  # as below: the driver starts what is missing
            for number in range(1, n + 1):
                workers.append(_Worker(number, spec, fork, siblings=list(workers)))
        return lambda: workers

    def start() -> None:
        # A worker that cannot be started here fails again, and says why, in the driver.
        with contextlib.suppress(Exception):
            for number in range(1, n + 1):
                workers.append(_Worker(number, spec))

    thread = threading.Thread(target=start, name="expkit-start-workers", daemon=True)
    thread.start()

    def started() -> list[_Worker]:
        thread.join()
        return workers

    return started


def _may_fork() -> bool:
    # A thread other than this one could hold a lock (an import's, logging's) that the
    # forked child would inherit held, forever: fork only a process of one thread (counted
    # by the kernel, so that a library's own threads count too).
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def stop_workers(workers: list[_Worker]) -> None:
    """Ask every worker to end, then wait for each: they wind down side by side."""
    for worker in workers:
        worker.ask_to_stop()
    for worker in workers:
        worker.stop()


def describe_exit(code: int | None) -> str:
    """How a process ended, in words: ``killed by SIGKILL``, ``exit code 3``."""
    import signal

    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Driver:
    """Hands the session's items to ``n`` worker processes and gathers their reports."""

    def __init__(self, session: Any, n: int, started: list[_Worker] | None = None) -> None:
        self.session = session
        self.config = session.config
        self.hook = session.config.pluginmanager.hook
        self.n = n
        self.spec = session_spec(session.config)
        self.pending: deque[Item] = deque()
        self.workers: list[_Worker] = []
        # Workers started before the driver knew its items (see start_workers): taken out of
        # that list first, the ones left in it stopped at the end.
        self.started = started if started is not None else []
        self.numbers = iter(range(len(self.started) + 1, 1 << 30))
        self.stopping = False

    def run(self) -> None:
        """Run every item; Ctrl-C interrupts the running ones and stops."""
        from expkit_plugins.session import run_item

        for item in self.session.items:
            if item.skip is not None:  # reported here, with nothing to run
                self._report(run_item(self.session, item))
            else:
                self.pending.append(item)
        self.drive(len(self.pending))

    def drive(self, count: int) -> None:
        """Start ``min(n, count)`` workers and hand out items while :meth:`has_next` says so.

        Ctrl-C or SIGTERM interrupts the running items and stops.
        """
        # The workers run in sessions of their own: a SIGTERM for the sweep (`kill`, a
        # scheduler's time limit) reaches the driver alone, which interrupts them as Ctrl-C.
        previous = install_sigterm()
        interrupted = False
        try:
            for _ in range(min(self.n, count)):
                self.workers.append(self._start())
            self._loop()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as a SigtermInterrupt
            interrupted = True
            self._interrupt()
        finally:
            # From here a signal is only noted: cut short, this would leave workers running
            # and their runs RUNNING.
            deferred = DeferredInterrupts(previous)
            try:
                if interrupted:
                    self._kill_unstopped()
                stop_workers([*self.workers, *self.started])
            finally:
                deferred.restore()
        late = deferred.interrupt()
        if late is not None and not interrupted:
            raise late

    def _start(self) -> _Worker:
        if self.started and self.started[0].spec == self.spec:
            return self.started.pop(0)
        return _Worker(next(self.numbers), self.spec)

    def _loop(self) -> None:
        from multiprocessing.connection import wait

        while any(w.item is not None for w in self.workers) or (
            self.has_next() and not self.stopping and self.workers
        ):
            by_conn = {w.conn: w for w in self.workers}
            for conn in wait(list(by_conn), timeout=1.0):
                self._receive(by_conn[conn])

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self._hand_out(worker)
        elif kind == "started":
            worker.run_id = message[2]
        elif kind == "status":
            self.hook.expkit_run_livestatus(status=message[1])
        elif kind == "ask":
            try:
                worker.conn.send(("answer", self.answer(message[1])))
            except OSError:
                pass  # it died meanwhile: the end of its socket tells
        elif kind == "report":
            worker.item, worker.run_id = None, None
            self._report(message[1])
            self._hand_out(worker)

    def has_next(self) -> bool:
        """Whether an item is left to hand out."""
        return bool(self.pending)

    def next_point(self, worker: _Worker) -> tuple[Item, PointSpec] | None:
        """The next item for ``worker`` and what to send it, or None when there is none."""
        if not self.pending:
            return None
        item = self.pending.popleft()
        return item, point_spec(item, self.config.rootdir)

    def not_sent(self, item: Item) -> None:
        """``item`` could not be sent: it goes back to be handed out again."""
        self.pending.appendleft(item)

    def answer(self, question: Any) -> Any:
        """The answer to an item's :func:`ask_driver`; none here."""
        return None

    def _hand_out(self, worker: _Worker) -> None:
        if self.stopping:
            return
        nxt = self.next_point(worker)
        if nxt is None:
            return
        item, point = nxt
        try:
            worker.conn.send(("run", point))
        except OSError:  # it died meanwhile: the end of its socket tells, and it is replaced
            self.not_sent(item)
            return
        worker.item, worker.item_output = item, worker.log_size()
        self.hook.expkit_run_logstart(nodeid=item.nodeid)

    def _report(self, report: RunReport) -> None:
        from expkit_plugins.session import fails_session

        self.session.reports.append(report)
        self.hook.expkit_run_logreport(report=report)
        if report.status == "INTERRUPTED":
            self.session.shouldstop = self.session.interrupted = self.stopping = True
        if self.config.option.exitfirst and fails_session(report):
            self.session.shouldstop = self.stopping = True

    def _lost(self, worker: _Worker) -> None:
        """``worker`` died: its item failed, a new worker takes its place."""
        worker.proc.join()
        how = describe_exit(worker.proc.exitcode)
        self.workers.remove(worker)
        tail = worker.log_tail()
        # Stored as its output: the run's last beat has at most part of it.
        output = worker.output_since(worker.item_output)
        worker.close()
        if worker.item is not None:
            message = f"worker {worker.number} (pid {worker.proc.pid}) died ({how}) running it"
            last = "\n".join(output.splitlines()[-15:])  # its own: not an earlier item's
            longrepr = message + (f"; its last output:\n{last}" if last else "")
            marked = mark_stored(
                self.spec.store_urls, self.config, worker.run_id, "FAILED", message, output
            )
            self._report(
                RunReport(
                    worker.item.nodeid,
                    "FAILED",
                    0.0,
                    run_id=worker.run_id,
                    message=message,
                    longrepr=longrepr,
                    stored=marked,
                )
            )
        elif not worker.ready:
            # It could not even start: another would fail the same way.
            self.stopping = True
            sys.stderr.write(f"ERROR: worker {worker.number} failed to start ({how}):\n{tail}\n")
            for item in self.pending:
                self._report(RunReport(item.nodeid, "ERROR", 0.0, message="no worker to run it"))
            self.pending.clear()
            return
        if self.has_next() and not self.stopping:
            self.workers.append(self._start())

    def _interrupt(self) -> None:
        """Ctrl-C or SIGTERM: interrupt the running items, wait (a while) for them to be stored.

        A second signal ends the wait; :meth:`_kill_unstopped` deals with the rest.
        """
        import signal
        from multiprocessing.connection import wait

        self.session.shouldstop = self.session.interrupted = self.stopping = True
        deadline = time.monotonic() + INTERRUPT_GRACE
        try:
            for worker in self.workers:
                if worker.item is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.proc.pid, signal.SIGINT)
            while any(w.item is not None for w in self.workers) and time.monotonic() < deadline:
                by_conn = {w.conn: w for w in self.workers if w.item is not None}
                for conn in wait(list(by_conn), timeout=0.5):
                    self._receive(by_conn[conn])
        except KeyboardInterrupt:
            pass  # a second Ctrl-C or SIGTERM: do not wait any longer

    def _kill_unstopped(self) -> None:
        """Kill the workers still running an interrupted item; store their runs INTERRUPTED."""
        for worker in self.workers:
            if worker.item is not None:
                worker.proc.kill()
                message = "interrupted; its worker did not stop in time and was killed"
                marked = mark_stored(
                    self.spec.store_urls, self.config, worker.run_id, "INTERRUPTED", message
                )
                self._report(
                    RunReport(
                        worker.item.nodeid,
                        "INTERRUPTED",
                        0.0,
                        worker.run_id,
                        None,
                        message,
                        stored=marked,
                    )
                )
                worker.item = None


def mark_stored(
    urls: Any, config: Any, run_id: Any, status: str, message: str, output: str = ""
) -> tuple:
    """Record in each store that run ``run_id``, whose process is gone, ended with ``status``
    (and printed ``output``, if given); the stores that have it so
    (:class:`expkit.delivery.StoreOutcome`, for the summary)."""
    if run_id is None:
        return ()
    import logging

    from expkit.delivery import StoreOutcome
    from expkit.run import store_for_url
    from expkit.serialize import utcnow
    from expkit.utils import redact_url

    marked = []
    for url in urls:
        try:
            store = store_for_url(config.pluginmanager, url)
            store.resume(run_id)
            if output:
                # The run's own info and result, as stored: only its output is new.
                doc = getattr(store, "_doc", None) or {}
                store.heartbeat_event(doc.get("info") or {}, output, utcnow(), doc.get("result"))
            if status == "FAILED":
                store.failed_event(fail_time=utcnow(), fail_trace=[message + "\n"])
            else:
                store.interrupted_event(interrupt_time=utcnow(), status=status)
        except Exception as exc:
            logging.getLogger("expkit").warning(
                "could not mark run %s %s in %s: %s", run_id, status, url, exc
            )
        else:
            marked.append(StoreOutcome(redact_url(url), "stored", run_id=run_id))
    return tuple(marked)
