"""``--dask ADDRESS|FILE|local``: run the items on the workers of a Dask distributed cluster.

``local`` starts a ``LocalCluster`` on this machine (``-n`` workers, one thread each); an
address (``tcp://HOST:8786``) or a scheduler file (``scheduler.json``) joins a running
scheduler. Each point runs on a worker, which records it straight into the stores: the
workers must reach them (a folder they share, a SQL server, MongoDB). The experiment's
files travel with the points, so workers that do not share the folder run the same code.

A point whose worker is lost is tried once more; a third try is refused and the point is
FAILED. A try that finds its earlier one ended in the store (COMPLETED, or FAILED by itself)
takes that run instead of running again, so no point is ever stored twice as COMPLETED. A
worker process forgets the projects' modules it imported before it runs another session's
points. Store URLs reach the workers absolute. Ctrl-C or SIGTERM interrupts the running
points; a worker whose point does not stop in time is killed. The ``distributed`` package
(the ``dask`` extra) is imported only when ``--dask`` is given.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import UsageError
from expkit.nodes import LiveStatus, RunReport
from expkit.pluginmanager import hookimpl
from expkit.signals import DeferredInterrupts, install_sigterm
from expkit_plugins.workers import (
    INTERRUPT_GRACE,
    WorkerSession,
    mark_stored,
    point_spec,
    session_spec,
    set_asker,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from expkit.remote import PointSpec, SessionSpec, ShippedFile

# Tries of one point: the first and one more after its worker was lost.
MAX_TRIES = 2
LOST = "its Dask worker was lost"  # the fail trace of a try stored FAILED for that
_TOPIC = "expkit"
# How long a running point waits for its driver's answer to a question (ask_driver).
ASK_TIMEOUT = 30.0

# --- on a Dask worker ------------------------------------------------------------------------

# The session whose points this process runs now: its key, and the session or why it
# cannot be made. One at a time: see _forget_projects.
_current: list = [None, None]
_project_folders: set[str] = set()  # folders whose modules are a project's, not installed
_WORKER_PATH = frozenset(sys.path)  # the Dask worker's own, before any project's
_questions = itertools.count()  # numbers the questions this process asks its drivers
_run_lock = threading.Lock()  # one run at a time per process: captured functions are shared
_running: dict[str, int] = {}  # token -> thread id of the run, for Ctrl-C from the driver


def run_point(spec: SessionSpec, point: PointSpec, token: str, topic: str) -> RunReport:
    """Run ``point`` on this Dask worker (the task every point is)."""
    from distributed import get_worker

    worker = get_worker()
    with _run_lock:
        session = _session(spec, worker, topic)
        if isinstance(session, str):
            return RunReport(point.nodeid, "ERROR", 0.0, message=session)
        tries = _count_try(worker, token)
        marked: tuple = ()  # the lost tries, stored FAILED here: the summary counts them
        if tries > 1:
            earlier, marked = _earlier_try(session, point, token, tries)
            if earlier is not None:
                return earlier
        session.current = (point.nodeid, token)  # type: ignore[attr-defined]
        _running[token] = threading.get_ident()
        meta = {"dask": {"token": token, "worker": worker.address, "try": tries}}
        # As on the driver's machine, a run starts in the folder expkit was started in (or
        # its copy here). Points run one at a time per process (the lock); give expkit
        # workers of their own (--nthreads 1) when other work shares the cluster.
        cwd = os.getcwd()
        previous = set_asker(lambda question: _ask(worker, topic, token, question))
        try:
            os.chdir(session.config.invocation_dir)
            report = session.run(point, meta)
            return attrs.evolve(report, stored=(*marked, *report.stored))
        finally:
            set_asker(previous)
            os.chdir(cwd)
            _running.pop(token, None)
            session.current = None  # type: ignore[attr-defined]
            # The folders the collector put on sys.path: the experiments' own.
            _project_folders.update(p for p in sys.path if p and p not in _WORKER_PATH)


def _session(spec: SessionSpec, worker: Any, topic: str) -> WorkerSession | str:
    """This process's session for ``spec``, made on first use; or why it cannot be made."""
    parts = (spec.args, spec.invocation_dir, spec.rootdir, spec.store_urls)
    key = repr((parts, [(f.path, f.md5) for f in spec.files]))
    if _current[0] == key:
        return _current[1]
    _forget_projects()
    _current[:] = [key, None]
    try:
        root = materialize(spec)
        _project_folders.add(str(root))
        if root != Path(spec.rootdir):
            _check_stores_reachable(spec.store_urls, worker.address)

        def started(run: Any) -> None:
            nodeid, token = session.current  # type: ignore[attr-defined]
            worker.log_event(topic, ["started", nodeid, token, run._id, time.time()])

        session = WorkerSession(spec, root, on_start=started)
        session.current = None  # type: ignore[attr-defined]
        _current[1] = session  # before its status thread, which ends when it is not current
        threading.Thread(target=_send_status, args=(session, worker, topic), daemon=True).start()
    except Exception as exc:
        _current[1] = f"cannot run on Dask worker {worker.address}: {exc}"
    return _current[1]


def _forget_projects() -> None:
    """Drop what this process imported from projects' folders, before another session's points.

    A long-lived worker would otherwise run a module of an earlier session (a helper since
    edited, another project's ``utils.py``) while the run records the files it was sent. A
    new session imports its files again; its folders go first on ``sys.path`` again.
    Installed packages stay: importing them again is slow, and for some impossible.
    """
    import importlib
    import linecache

    from expkit_plugins import python

    folders = tuple(os.path.join(os.path.realpath(f), "") for f in _project_folders)
    if not folders:
        return

    def local(file: Any) -> bool:
        if not isinstance(file, str):
            return False
        path = os.path.join(os.path.realpath(file), "")
        return path.startswith(folders) and not path.startswith(_kept_paths())

    for name, module in list(sys.modules.items()):
        if local(getattr(module, "__file__", None)):
            del sys.modules[name]
    for conf in list(python._expconfs):  # the collector's own cache of expconf.py modules
        if local(str(conf)):
            del python._expconfs[conf]
    sys.path[:] = [p for p in sys.path if not (p and local(p))]
    importlib.invalidate_caches()
    linecache.clearcache()


@functools.lru_cache(maxsize=1)
def _kept_paths() -> tuple[str, ...]:
    """What the worker imports on its own: installed packages, the standard library, its own
    ``sys.path``, expkit (installed editable, in a project's folder too). Never dropped."""
    import site
    import sysconfig

    import expkit
    import expkit_plugins

    paths = {*site.getsitepackages(), site.getusersitepackages(), *_WORKER_PATH}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    paths.update(os.path.dirname(m.__file__ or "") for m in (expkit, expkit_plugins))
    return tuple(os.path.join(os.path.realpath(p), "") for p in paths if p)


def materialize(spec: SessionSpec) -> Path:
    """Where the project's files are on this machine: the driver's folder, or a copy of them."""
    root = Path(spec.rootdir)
    from expkit.utils import file_md5

    def same(file: ShippedFile) -> bool:
        path = root / file.path
        try:
            return path.is_file() and file_md5(str(path)) == file.md5
        except OSError:
            return False

    if all(same(f) for f in spec.files):
        return root
    import hashlib
    import tempfile

    digest = hashlib.sha1(repr(sorted((f.path, f.md5) for f in spec.files)).encode()).hexdigest()
    target = Path(tempfile.gettempdir()) / f"expkit-dask-{os.getuid()}" / digest[:16]
    if not (target / ".complete").exists():
        for file in spec.files:
            path = target / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + f".{os.getpid()}.part")
            part.write_bytes(file.content)
            os.replace(part, path)
        (target / ".complete").touch()
    return target


def _check_stores_reachable(urls: tuple[str, ...], where: str) -> None:
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if sep and scheme not in ("file", "tinydb", "sqlite"):
            continue  # a database: reached over the network
        folder = Path(rest if sep else url)
        if scheme == "tinydb":
            folder = folder.parent
        elif scheme == "sqlite":  # made absolute by the driver: sqlite:////path/runs.db
            folder = Path(urllib.parse.unquote(rest.partition("?")[0][1:])).parent
        if not folder.is_dir():
            raise UsageError(
                f"the store {url} is not on this worker ({where}) and its folder is not shared; "
                "use a store every worker reaches: a shared folder, a SQL server or MongoDB"
            )


def _task_key(token: str) -> str:
    """The key of the Dask task of the point ``token``."""
    return f"expkit-{token}"


def _count_try(worker: Any, token: str) -> int:
    """How many times this point was started, this time included (kept by the scheduler)."""
    from distributed.utils import sync

    # Under the task's key: the scheduler drops it with the task, when the driver is done.
    keys = [_task_key(token), "tries"]
    tries = int(sync(worker.loop, worker.scheduler.get_metadata, keys=keys, default=0)) + 1
    # Not waited for: it reaches the scheduler long before the run could lose its worker, and
    # the store, not this count, is what keeps a point from being stored twice as COMPLETED.
    worker.loop.add_callback(worker.scheduler.set_metadata, keys=keys, value=tries)
    return tries


def _earlier_try(
    session: WorkerSession, point: PointSpec, token: str, tries: int
) -> tuple[RunReport | None, tuple]:
    """After a lost worker: the report of an earlier try that ended (None: try again), and
    where the lost tries were stored FAILED."""
    from expkit.runs import runs

    config = session.config
    earlier = []
    for url in session.spec.store_urls:
        try:
            records = runs(url, sort=None, plugin_manager=config.pluginmanager)
        except Exception:
            continue
        earlier += [(url, r) for r in records if (r.meta.get("dask") or {}).get("token") == token]
    for _, record in earlier:
        if record.status == "COMPLETED":
            return RunReport(point.nodeid, "COMPLETED", 0.0, record.id, record.result), ()
    # A try that ended otherwise (FAILED, INTERRUPTED) is not run again either: the Dask
    # scheduler runs a finished task again when the worker holding its result is lost.
    for url, record in earlier:
        trace = _trace_of_ended(url, record, config)
        if trace is not None:
            message = trace[-1].strip() if trace else None
            return RunReport(point.nodeid, record.status, 0.0, record.id, message=message), ()
    marked: tuple = ()
    for _, record in earlier:
        if record.status in ("RUNNING", "QUEUED"):
            marked += mark_stored(session.spec.store_urls, config, record.id, "FAILED", LOST)
    if tries > MAX_TRIES:
        from expkit.delivery import StoreOutcome
        from expkit.utils import redact_url

        message = f"{LOST} {tries - 1} times; not tried again"
        run_id = earlier[-1][1].id if earlier else None
        every = tuple(StoreOutcome(redact_url(u), "stored", run_id=r.id) for u, r in earlier)
        return RunReport(point.nodeid, "FAILED", 0.0, run_id, message=message, stored=every), ()
    return None, marked


def _trace_of_ended(url: str, record: Any, config: Any) -> list[str] | None:
    """The fail trace of a try that ended by itself (empty if none); None if it did not:
    it is still RUNNING, or an earlier try stored it FAILED as lost."""
    from expkit.runs import get_run

    if record.status in ("RUNNING", "QUEUED"):
        return None
    try:
        trace = get_run(url, record.id, plugin_manager=config.pluginmanager).fail_trace or []
    except Exception:
        return None
    return None if trace == [LOST + "\n"] else trace


def _ask(worker: Any, topic: str, token: str, question: Any) -> Any:
    """Ask the driver through the scheduler: an event out, the answer back as its metadata."""
    from distributed.utils import sync

    number = next(_questions)
    worker.log_event(topic, ["ask", token, number, question])
    keys = _answer_keys(token, number)
    deadline = time.monotonic() + ASK_TIMEOUT
    pause = 0.002
    while time.monotonic() < deadline:
        answer = sync(worker.loop, worker.scheduler.get_metadata, keys=keys, default=None)
        if answer is not None:  # the driver sends [answer], so that None is no answer yet
            return answer[0]
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return None  # the driver is gone or does not answer: the run goes on


def _answer_keys(token: str, number: int) -> list:
    # Under the task's key, as the tries: the scheduler drops the answers with the task.
    return [_task_key(token), "answer", number]


def _send_status(session: WorkerSession, worker: Any, topic: str) -> None:
    while _current[1] is session:  # until another session's points run here
        time.sleep(1.0)
        run, current = session.tracker.run, session.current  # type: ignore[attr-defined]
        if run is None or current is None:
            continue
        status = LiveStatus.of(current[0], time.time(), run)
        metrics = {k: v for k, v in status.metrics.items() if isinstance(v, (int, float, str))}
        try:
            worker.log_event(topic, ["status", status.nodeid, metrics, status.step, status.total])
        except Exception:
            return


def interrupt_running(tokens: Any) -> list[str]:
    """Raise KeyboardInterrupt in this worker's running points of ``tokens`` (Ctrl-C at their
    driver), when each next runs Python code; the tokens of those."""
    import ctypes

    found = {t: i for t, i in list(_running.items()) if t in tokens}
    for ident in found.values():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
        )
    return list(found)


def kill_running(tokens: Any) -> None:
    """End this worker process if it runs a point of ``tokens`` (one that ignored Ctrl-C, in a
    blocking call): as ``-n`` kills such a worker. Its nanny, if any, starts a new one."""
    import signal

    if any(token in _running for token in tokens):
        os.kill(os.getpid(), signal.SIGKILL)


# --- the driver ------------------------------------------------------------------------------


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.getgroup("sweeps", "sweeps and parallel runs").addoption(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="run on a Dask cluster: a scheduler address, a scheduler file, or 'local'",
    )


@hookimpl
def expkit_configure(config: Any) -> None:
    address = getattr(config.option, "dask", None)
    if config.command not in ("run", "tune") or not address or config.option.collect_only:
        return
    if address != "local" and config.option.numprocesses is not None:
        raise UsageError("-n with --dask ADDRESS: the cluster has its workers; drop -n")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(
            "--dask needs the distributed package: pip install 'expkit[dask]'"
        ) from None
    check_address(address)


def check_address(address: str) -> None:
    """Refuse, before any store or study is opened, a ``--dask`` no scheduler can have.

    Dask itself says so only when the client connects, as a ValueError from deep inside.
    """
    if address == "local":
        return
    if address.endswith(".json"):
        if not os.path.isfile(address):
            raise _bad_address(address, "no such scheduler file")
        return
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    scheme, location = parse_address(address)
    try:
        get_backend(scheme)
    except (ValueError, ImportError):
        raise _bad_address(address, f"unknown address scheme {scheme!r}") from None
    # "[::1]" is a host without a port: its colons are the IPv6 address's.
    port = "" if location.endswith("]") else location.rpartition(":")[2]
    if ":" not in location or not port:
        raise _bad_address(address, "no port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _bad_address(address, f"the port {port!r} is not a number from 1 to 65535")
    try:
        get_address_host_port(address)
    except ValueError:
        raise _bad_address(address, f"this Dask cannot connect to {scheme}:// addresses") from None


def _bad_address(address: str, what: str) -> UsageError:
    return UsageError(
        f"--dask {address!r}: {what}; give the scheduler's address (tcp://HOST:PORT), "
        "its scheduler file (.json) or 'local'"
    )


@hookimpl(tryfirst=True)
def expkit_runtestloop(session: Any) -> bool | None:
    if not getattr(session.config.option, "dask", None):
        return None
    DaskDriver(session).run()
    return True


def shipped_files(session: Any) -> tuple[ShippedFile, ...]:
    """The project files the items need: their files, expconf.py files, their local imports."""
    from expkit.info import gather_experiment_info
    from expkit.remote import ShippedFile
    from expkit.utils import file_md5

    config = session.config
    root = config.rootdir.resolve()
    paths: set[Path] = set()
    if config.inifile is not None:
        paths.add(Path(config.inifile).resolve())
    seen: set[Path] = set()
    for item in session.items:
        path = item.path.resolve()
        paths.add(path)
        folder = path.parent
        while folder != root and root in folder.parents:
            paths.add(folder / "expconf.py")
            folder = folder.parent
        paths.add(root / "expconf.py")
        if path not in seen:
            seen.add(path)
            for source in gather_experiment_info(item.experiment).sources:
                paths.add(Path(source.path).resolve())
    files = []
    for path in sorted(paths):
        if path.is_file() and root in path.parents:
            relative = path.relative_to(root).as_posix()
            files.append(ShippedFile(relative, file_md5(str(path)), path.read_bytes()))
    return tuple(files)


class DaskDriver:
    """Submits the session's items to Dask and gathers their reports as they finish."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.config = session.config
        self.hook = session.config.pluginmanager.hook
        import uuid

        self.topic = f"{_TOPIC}-{uuid.uuid4().hex}"
        self.client: Any = None
        self.started: dict[str, Any] = {}  # token -> run id
        self.stopping = False

    def _client(self) -> Any:
        import logging

        from distributed import Client, LocalCluster

        address = self.config.option.dask
        if address == "local":
            n = self.config.option.numprocesses or len(os.sched_getaffinity(0))
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            return Client(cluster)
        try:
            if address.endswith(".json") and os.path.isfile(address):
                return Client(scheduler_file=address, timeout="5s")
            return Client(address, timeout="5s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        except ValueError as exc:  # what check_address could not foresee (a scheduler file's)
            raise _bad_address(address, str(exc).splitlines()[0]) from None

    def run(self) -> None:
        """Run every item on the cluster; Ctrl-C interrupts the running ones."""
        from expkit_plugins.session import run_item

        todo = []
        for item in self.session.items:
            if item.skip is not None:
                self._report(run_item(self.session, item))
            else:
                todo.append(item)
        if not todo:
            return
        client = self._client()
        try:
            self._run_on(client, todo)
        finally:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()

    def _run_on(self, client: Any, todo: list) -> None:
        rootdir = self.config.rootdir
        items = iter(todo)

        def next_point() -> tuple[Any, PointSpec] | None:
            item = next(items, None)
            return None if item is None else (item, point_spec(item, rootdir))

        self._drive(client, self._spec(), next_point, slots=None)

    def _spec(self) -> SessionSpec:
        # Sent with every point, not scattered: scattered data dies with the workers holding it.
        return session_spec(self.session.config, shipped_files(self.session))

    def _drive(
        self,
        client: Any,
        spec: SessionSpec,
        next_point: Callable[[], tuple[Any, PointSpec] | None],
        slots: int | None,
    ) -> None:
        """Keep ``slots`` points running (None: all at once), reporting each as it finishes.

        ``next_point()`` gives the next ``(item, point)``, or None when none is to start now.
        Ctrl-C interrupts the running points.
        """
        import uuid

        from distributed import as_completed

        self.client = client
        client.subscribe_topic(self.topic, self._event)
        futures: dict = {}  # future -> (item, token), until reported
        # Results are fetched as the tasks finish, side by side, not one request per turn.
        pending = as_completed([], with_results=True, raise_errors=False)

        def submit() -> bool:
            nxt = next_point()
            if nxt is None:
                return False
            item, point = nxt
            token = uuid.uuid4().hex
            args = (spec, point, token, self.topic)
            future = client.submit(run_point, *args, key=_task_key(token), pure=False)
            futures[future] = (item, token)
            pending.add(future)
            return True

        def fill() -> None:
            running = 0 if slots is None else sum(1 for f in futures if not f.done())
            while (slots is None or running < slots) and submit():
                running += 1

        # A SIGTERM for the sweep (`kill`, a scheduler's time limit) stops it as Ctrl-C does.
        previous = install_sigterm()
        try:
            fill()
            for future, result in pending:
                handled = futures.pop(future)
                # Let go of it now: Dask runs a task its client still holds again when the
                # worker holding its result is lost, and the point would run twice.
                future.release()
                self._finished(result, *handled)
                if self._stops():
                    client.cancel([f for f in futures if not f.done()])
                    break
                fill()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as a SigtermInterrupt
            self._interrupt(client, futures)
        finally:
            DeferredInterrupts(previous).restore()  # SIGTERM's handler from before

    def _stops(self) -> bool:
        """Whether no more points are to be gathered or started (-x met a failure)."""
        return self.stopping

    def _finished(self, result: Any, item: Any, token: str) -> None:
        """Report a finished task: its RunReport, or the exception Dask gave instead."""
        from distributed import CancelledError

        if isinstance(result, CancelledError):
            return
        if isinstance(result, BaseException):  # KilledWorker when the scheduler gave up
            message = f"{type(result).__name__}: {result}".splitlines()[0]
            run_id = self.started.get(token)
            marked = mark_stored(self._urls(), self.config, run_id, "FAILED", message)
            result = RunReport(item.nodeid, "FAILED", 0.0, run_id, message=message, stored=marked)
        self._report(result)

    def _urls(self) -> tuple[str, ...]:
        return session_spec(self.session.config).store_urls

    def _report(self, report: RunReport) -> None:
        from expkit_plugins.session import fails_session

        self.session.reports.append(report)
        self.hook.expkit_run_logreport(report=report)
        if report.status == "INTERRUPTED":
            self.session.shouldstop = self.session.interrupted = True
        if self.config.option.exitfirst and fails_session(report):
            self.session.shouldstop = self.stopping = True

    def _event(self, event: Any) -> None:
        _, message = event
        if message[0] == "started":
            _, nodeid, token, run_id, _ = message
            self.started[token] = run_id
            self.hook.expkit_run_logstart(nodeid=nodeid)
        elif message[0] == "status":
            _, nodeid, metrics, step, total = message
            self.hook.expkit_run_livestatus(
                status=LiveStatus(nodeid, time.time(), metrics, step, total)
            )
        elif message[0] == "ask":
            _, token, number, question = message
            keys, value = _answer_keys(token, number), [self.answer(question)]
            # Called in the client's event loop: the answer goes out without waiting here.
            self.client.loop.add_callback(
                self.client.scheduler.set_metadata, keys=keys, value=value
            )

    def answer(self, question: Any) -> Any:
        """The answer to a point's :func:`~expkit_plugins.workers.ask_driver`; none here."""
        return None

    def _interrupt(self, client: Any, futures: dict) -> None:
        """Ctrl-C or SIGTERM: cancel what did not start, interrupt what runs, gather those reports.

        A point that does not stop within ``INTERRUPT_GRACE`` (in a blocking call, which the
        interrupt waits behind) has its worker process killed, as ``-n`` does, and its run
        stored INTERRUPTED here. A second signal ends the wait.
        """
        from distributed import wait

        self.session.shouldstop = self.session.interrupted = True
        left = {f: futures[f][1] for f in futures if not f.done()}
        tokens = list(left.values())
        try:
            answers = client.run(interrupt_running, tokens, on_error="ignore")
            # What runs: what a worker interrupted, and what started (its event may be late).
            runs = set(self.started).union(*(a for a in answers.values() if isinstance(a, list)))
            client.cancel([f for f, token in left.items() if token not in runs])
            wait([f for f, token in left.items() if token in runs], timeout=INTERRUPT_GRACE)
        except (KeyboardInterrupt, TimeoutError):
            pass
        # From here a signal is only noted: cut short, this would leave runs RUNNING.
        deferred = DeferredInterrupts()
        try:
            self._stop_unstopped(client, futures, tokens)
        finally:
            deferred.restore()

    def _stop_unstopped(self, client: Any, futures: dict, tokens: list) -> None:
        """Kill the workers still running a point of ``tokens``; report the points that ran."""
        ended = ("finished", "error")
        started = [f for f, (_, token) in futures.items() if token in self.started]
        unstopped = [f for f in started if f.status not in ended]
        # Cancelled first, so that the scheduler does not run them again elsewhere.
        client.cancel([f for f in futures if not f.done()])
        if tokens:
            # Returns once those workers are gone: a killed one never answers.
            client.run(kill_running, tokens, on_error="ignore")
        # The points that ended meanwhile too: gathered here, not by the loop.
        for future, (item, token) in futures.items():
            if future.status in ended:
                ok = future.status == "finished"
                self._finished(future.result() if ok else future.exception(), item, token)
            elif future in unstopped:
                message = "interrupted; its Dask worker did not stop in time and was killed"
                run_id = self.started[token]
                marked = mark_stored(self._urls(), self.config, run_id, "INTERRUPTED", message)
                self._report(
                    RunReport(item.nodeid, "INTERRUPTED", 0.0, run_id, None, message, stored=marked)
                )
