"""The Optuna side of ``expkit tune``: the study beside the store, trials as items, the drivers.

Imported only by ``expkit tune``. One driver process owns the study: it asks Optuna for a
trial whenever a slot (this process, a ``-n`` worker, a Dask worker) is free, runs it as an
item with ``meta.study = {"name", "trial"}``, and tells Optuna how it ended. A run's points of
the objective metric come back as questions (:func:`expkit_plugins.workers.ask_driver`),
which the driver answers with ``trial.report`` and ``trial.should_prune``.

Where the study is kept: in the database of an SQL store (Optuna's own tables beside
expkit's); in ``optuna.journal`` inside a file store's folder; for other stores in
``.expkit/optuna-<hash of the URL>.journal`` under the project root. Optuna's journal file
is appended to and flushed at every change, so a driver killed at any moment loses nothing
told; the next session reconciles the trials it left running with their runs in the store.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from expkit.errors import ExpkitError, UsageError
from expkit.nodes import ExitCode, Item, RunReport
from expkit.pluginmanager import hookimpl
from expkit.utils import redact_url
from expkit_plugins.dask_workers import DaskDriver
from expkit_plugins.sweep import Sweep, id_text, objective, parse_sweep
from expkit_plugins.tune import trial_spec
from expkit_plugins.workers import Driver, mark_stored, point_spec, set_asker

# How often the driver looks at a run left running by an earlier session's worker.
POLL_INTERVAL = 0.5
# A trial with no run yet that another host's driver asked for this long ago is taken as lost.
START_GRACE = 60.0
# The user attributes expkit keeps on a trial: where it ran, its run, why it does not count.
_WHERE, _RUN, _UNCOUNTED = "expkit", "run_id", "expkit_uncounted"
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# --- the search space ----------------------------------------------------------------------


def search_space(sweeps: list[Sweep], grid: bool) -> tuple[dict[str, Any], dict[str, dict]]:
    """The Optuna distributions of the ``--sweep`` options (value lists are categorical), and
    the stand-ins among their choices: key -> {stand-in: value} (see :func:`_choices`)."""
    space: dict[str, Any] = {}
    stand_ins: dict[str, dict] = {}
    for sweep in sweeps:
        if sweep.draw is None:
            choices, stand_ins[sweep.key] = _choices(sweep, sweep.values)
            space[sweep.key] = CategoricalDistribution(choices)
            continue
        name, args = sweep.draw
        if grid:
            raise UsageError(
                f"--sampler grid takes lists of values: --sweep {sweep.key}={name}(...) draws "
                "them; give a comma list, range(), linspace() or logspace()"
            )
        if name == "choice":
            choices, stand_ins[sweep.key] = _choices(sweep, args)
            space[sweep.key] = CategoricalDistribution(choices)
        elif name == "randint":
            space[sweep.key] = IntDistribution(args[0], args[1])
        else:
            low, high = float(args[0]), float(args[1])
            space[sweep.key] = FloatDistribution(low, high, log=name == "loguniform")
    return space, {key: names for key, names in stand_ins.items() if names}


def _choices(sweep: Sweep, values: tuple) -> tuple[tuple, dict[str, Any]]:
    """Each value once, in order, as Optuna is to see it; and the stand-ins among them.

    Optuna finds a choice by ``==``, which takes 0, 0.0 and False for one value: a value equal
    to an earlier one of another type goes to Optuna as a name (``"0.0 (float)"``), and its
    runs get the value itself, as the points of ``expkit run`` do.
    """
    for value in values:
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise UsageError(
                f"--sweep {sweep.key}: Optuna chooses among numbers, strings, booleans and "
                f"None, not {value!r}; give such values (a name for each list, say)"
            )
    distinct: list = []
    for value in values:
        if not any(type(seen) is type(value) and seen == value for seen in distinct):
            distinct.append(value)
    choices: list = []
    stand_ins: dict[str, Any] = {}
    for value in distinct:
        if any(choice == value for choice in choices):
            name = f"{value!r} ({type(value).__name__})"
            if name in distinct:
                raise UsageError(
                    f"--sweep {sweep.key}: the value {name!r} is also the name Optuna is "
                    f"given for {value!r}; give another word"
                )
            stand_ins[name] = value
            value = name
        choices.append(value)
    return tuple(choices), stand_ins


def grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the value lists, the first key varying slowest (as sweeps)."""
    import itertools

    keys = list(space)
    return [
        dict(zip(keys, combo)) for combo in itertools.product(*(space[k].choices for k in keys))
    ]


# --- where the study lives -------------------------------------------------------------------


class NoStorage(Exception):
    """A read-only use found no study kept for the store; the text says what is missing."""


def open_storage(store_url: str, rootdir: Path, create: bool = True) -> tuple[Any, str]:
    """Optuna's storage for the study of runs stored at ``store_url``, and where it is.

    ``create=False`` is a read-only use: where no study was ever kept it raises
    :class:`NoStorage` and makes nothing (no folder, journal file or database tables).
    """
    scheme = store_url.partition("://")[0].lower() if "://" in store_url else ""
    if scheme.partition("+")[0] in ("sqlite", "postgresql"):
        from optuna.storages import RDBStorage

        where = redact_url(store_url)
        try:
            if not create:
                _check_tables(store_url, where)
            return RDBStorage(store_url), where
        except NoStorage:
            raise
        except Exception as exc:
            raise UsageError(f"cannot keep the study in {where}: {exc}") from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = _journal_path(store_url, rootdir)
    if not create and not path.is_file():
        raise NoStorage(f"there is no {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    except OSError as exc:
        raise UsageError(f"cannot keep the study in {path}: {exc}") from None


def _journal_path(store_url: str, rootdir: Path) -> Path:
    from expkit_plugins.file_store import folder_of

    folder = folder_of(store_url)
    if folder is not None:
        return Path(folder) / "optuna.journal"
    import hashlib

    digest = hashlib.sha1(store_url.encode()).hexdigest()[:10]
    return rootdir / ".expkit" / f"optuna-{digest}.journal"


def _check_tables(url: str, where: str) -> None:
    """Raise :class:`NoStorage` unless the database at ``url`` has Optuna's tables."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Connecting to a SQLite file that is not there would make it.
        if not parsed.database or parsed.database == ":memory:":
            raise NoStorage(f"{where} names no database file")
        if not os.path.isfile(parsed.database):
            raise NoStorage(f"there is no database file {parsed.database}")
    engine = sqlalchemy.create_engine(url)
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):
            raise NoStorage(f"{where} holds no Optuna tables")
    finally:
        engine.dispose()


def _sampler(name: str, seed: int | None, parallel: bool) -> Any:
    if name == "tpe":
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UsageError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random, and grid (its points are queued)


def _pruner(name: str) -> Any:
    return optuna.pruners.MedianPruner() if name == "median" else optuna.pruners.NopPruner()


def process_id(pid: int) -> str:
    """``PID:START``: a process of this host, told apart from a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            start = stat.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return str(pid)  # not Linux: the pid alone
    return f"{pid}:{start}"


def _alive(process: Any) -> bool:
    """Whether the process :func:`process_id` named still runs (a zombie does not)."""
    pid_text, _, start = str(process).partition(":")
    if not pid_text.isdigit() or int(pid_text) <= 0:
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return True  # not Linux: the pid runs
    return fields[0] != b"Z" and (not start or fields[19].decode() == start)


# --- the study ------------------------------------------------------------------------------


@attrs.define
class Tuner:
    """The study of one ``expkit tune`` session: asks for trials and tells how they ended."""

    session: Any
    base: Item  # the experiment every trial runs
    space: dict[str, Any]
    study: Any
    where: str  # where the study is kept, for people
    trials: int  # the study's trials in all, earlier sessions' included
    objective: str | None
    maximize: bool
    grid: list[dict] | None = None
    stand_ins: dict[str, dict] = attrs.field(factory=dict)  # key -> {stand-in: value}
    deadline: float | None = None  # time.monotonic() after which no trial starts
    running: dict[int, Any] = attrs.field(factory=dict)  # number -> optuna Trial, this session's
    pruned_at: dict[int, tuple] = attrs.field(factory=dict)  # number -> (step, value)
    numbers: dict[str, int] = attrs.field(factory=dict)  # node id -> trial number
    told: int = 0  # this session's trials told
    lock: Any = attrs.field(factory=threading.Lock)  # Dask answers questions in another thread
    stopped: str | None = None  # why no more trials start (other than the count)
    problem: str | None = None  # a mistake every trial would repeat (exit 4)
    host: str = attrs.field(factory=socket.gethostname)
    driver: str = attrs.field(factory=lambda: process_id(os.getpid()))

    # --- counting ---

    def counts(self) -> tuple[int, int]:
        """(trials that count towards --trials, trials running now) in the whole study."""
        done = running = 0
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING:
                running += 1
            elif trial.state in _COUNTED and _UNCOUNTED not in trial.user_attrs:
                done += 1
        return done, running

    def left(self) -> int:
        """How many more trials may start now."""
        done, running = self.counts()
        left = self.trials - done - running
        if self.grid is not None:
            left = min(left, len(self._grid_left()))
        return max(left, 0)

    def _grid_left(self) -> list[dict]:
        taken = [
            t.params
            for t in self.study.get_trials(deepcopy=False)
            if t.state in (TrialState.RUNNING, TrialState.WAITING)
            or (t.state in _COUNTED and _UNCOUNTED not in t.user_attrs)
        ]
        return [point for point in self.grid or () if point not in taken]

    def has_next(self) -> bool:
        """Whether another trial is to start now."""
        if self.stopped or self.problem:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = "timeout"
            return False
        with self.lock:
            return self.left() > 0

    def values(self, params: dict) -> dict:
        """A trial's params as its run gets them: a stand-in choice is its value again."""
        return {k: self.stand_ins.get(k, {}).get(v, v) for k, v in params.items()}

    # --- asking and telling ---

    def next(self, worker_pid: int | None) -> tuple[Item, Any] | None:
        """A new trial as an item and the point a worker runs, or None when none is left."""
        if not self.has_next():
            return None
        with self.lock:
            if self.grid is not None:
                self.study.enqueue_trial(self._grid_left()[0])
            trial = self.study.ask(self.space)
            worker = None if worker_pid is None else process_id(worker_pid)
            where = {"host": self.host, "driver": self.driver, "worker": worker}
            trial.set_user_attr(_WHERE, where)
            self.running[trial.number] = trial
        item = trial_item(self.base, trial.number, self.values(trial.params))
        self.numbers[item.nodeid] = trial.number
        meta = {"study": {"name": self.study.study_name, "trial": trial.number}}
        point = attrs.evolve(point_spec(item, self.session.config.rootdir), meta=meta)
        return item, point

    def answer(self, question: Any) -> Any:
        """A running trial's question: ``("report", trial, step, value)`` -> prune it?"""
        if not (isinstance(question, tuple) and len(question) == 4 and question[0] == "report"):
            return None
        _, number, step, value = question
        with self.lock:
            trial = self.running.get(number)
            if trial is None:
                return False
            trial.report(value, step)
            if trial.should_prune():
                self.pruned_at[number] = (step, value)
                return True
            return False

    def finished(self, report: RunReport) -> RunReport:
        """Tell the study how the trial of ``report`` ended; the report, as it is to be shown."""
        number = self.numbers.get(report.nodeid)
        with self.lock:
            trial = self.running.pop(number, None) if number is not None else None
            if trial is None:
                return report
            if report.status == "PRUNED" and number in self.pruned_at:
                step, value = self.pruned_at[number]
                message = f"at step {step}: {self.objective}={value:.6g}"
                report = attrs.evolve(report, message=message)
            if report.run_id is not None:
                trial.set_user_attr(_RUN, _plain(report.run_id))
            if report.status == "ERROR":
                self.problem = self.problem or f"trial {number}: {report.message}"
            self._tell(trial, report.status, report.result, report.metrics, report.run_id)
        return report

    def not_run(self, item: Item) -> None:
        """``item``'s trial could not be handed out: it does not count."""
        number = self.numbers.get(item.nodeid)
        with self.lock:
            trial = self.running.pop(number, None) if number is not None else None
            if trial is not None:
                trial.set_user_attr(_UNCOUNTED, "not run")
                self.study.tell(trial, state=TrialState.FAIL)

    def _tell(self, trial: Any, status: str, result: Any, metrics: dict, run_id: Any) -> None:
        number = trial.number
        if status == "COMPLETED":
            value = objective(
                RunReport("", status, 0.0, result=result, metrics=metrics), self.objective
            )
            if value is None:
                # A mistake (--objective, the experiment's return), not what the trial found.
                self.problem = self.problem or _no_number(number, run_id, result, self.objective)
                trial.set_user_attr(_UNCOUNTED, "no number")
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, value)
        elif status == "PRUNED":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if status in ("INTERRUPTED", "ERROR"):
                # Stopped from outside, or never ran: it does not count, the next session
                # runs another in its place.
                trial.set_user_attr(_UNCOUNTED, status.lower())
            self.study.tell(trial, state=TrialState.FAIL)
        if number in self.numbers.values():  # this session's, not an earlier one's settled
            self.told += 1

    # --- trials an earlier (or this) session left running ---

    def settle(self, numbers: list[int] | None = None, wait: bool = True) -> None:
        """Tell the study how trials left RUNNING ended, from their runs in the store.

        ``numbers``: this session's trials the driver did not hear of (Ctrl-C, a lost Dask
        task); without them, every running trial whose driver is gone. A run still going
        on in a live process is waited for (``wait``) and told when it ends.
        """
        frozen = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if numbers is not None:
            frozen = [t for t in frozen if t.number in numbers]
        else:
            frozen = [t for t in frozen if not self._driver_alive(t)]
        if not frozen:
            return
        records = self._runs_of({t.number for t in frozen})
        waiting = []
        for trial in frozen:
            record = records.get(trial.number)
            where = trial.user_attrs.get(_WHERE) or {}
            if record is None:
                young = time.time() - trial.datetime_start.timestamp() < START_GRACE
                if numbers is None and where.get("host") != self.host and young:
                    continue  # another host's driver may be starting it now
            elif record.status == "RUNNING" and self._run_alive(record, where):
                waiting.append((trial, record, where))
                continue
            self._tell_record(self._trial(trial), record)
        for trial, record, _ in waiting if wait else ():
            sys.stdout.write(
                f"waiting for trial {trial.number} (run {record.id}), still running from an "
                "earlier session\n"
            )
            sys.stdout.flush()
        while waiting and wait:
            time.sleep(POLL_INTERVAL)
            for entry in list(waiting):
                trial, record, where = entry
                record = self._get_run(record.id)
                if (
                    record is None
                    or record.status != "RUNNING"
                    or not self._run_alive(record, where)
                ):
                    waiting.remove(entry)
                    self._tell_record(self._trial(trial), record)

    def _trial(self, frozen: Any) -> Any:
        return optuna.Trial(self.study, frozen._trial_id)

    def _driver_alive(self, trial: Any) -> bool:
        where = trial.user_attrs.get(_WHERE) or {}
        if where.get("host") != self.host:
            return False  # judged by its run's heartbeat
        return where.get("driver") != self.driver and _alive(where.get("driver"))

    def _run_alive(self, record: Any, where: dict) -> bool:
        from expkit.runs import probably_dead
        from expkit.settings import SETTINGS

        if where.get("host") == self.host and where.get("worker") is not None:
            return _alive(where.get("worker"))
        beat = self.session.config.settings.beat_interval or SETTINGS.DEFAULT_BEAT_INTERVAL
        return not probably_dead(record, beat_interval=beat)

    def _runs_of(self, numbers: set[int]) -> dict[int, Any]:
        """The run of each trial in ``numbers``, found by its ``meta.study``; COMPLETED first."""
        from expkit.runs import runs

        url = self.session.store_urls[0]
        name = self.study.study_name
        found: dict[int, Any] = {}
        try:
            records = runs(url, sort=None, plugin_manager=self.session.config.pluginmanager)
        except UsageError:
            return found  # no store yet: no runs
        for record in records:
            study = record.meta.get("study")
            if not isinstance(study, dict) or study.get("name") != name:
                continue
            number = study.get("trial")
            if number in numbers:
                earlier = found.get(number)
                if earlier is None or earlier.status != "COMPLETED":
                    found[number] = record
        return found

    def _get_run(self, run_id: Any) -> Any:
        from expkit.runs import get_run

        try:
            return get_run(self.session.store_urls[0], run_id, self.session.config.pluginmanager)
        except KeyError:
            return None

    def _tell_record(self, trial: Any, record: Any) -> None:
        """Tell ``trial`` (an earlier session's) how its run ``record`` (or no run) ended."""
        if record is None:
            trial.set_user_attr(_UNCOUNTED, "lost")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if record.status in ("RUNNING", "QUEUED"):  # its process is gone
            url = self.session.store_urls[0]
            message = "its trial's driver or worker is gone"
            mark_stored([url], self.session.config, record.id, "INTERRUPTED", message)
            record = attrs.evolve(record, status="INTERRUPTED")
        metrics = {}
        if record.status == "COMPLETED" and self.objective:
            full = self._get_run(record.id) or record
            metrics = {k: v["values"][-1] for k, v in (full.metrics or {}).items() if v["values"]}
        trial.set_user_attr(_RUN, _plain(record.id))
        self._tell(trial, record.status, record.result, metrics, record.id)

    # --- the end ---

    def best(self) -> Any:
        """The best completed trial of the study, or None."""
        try:
            return self.study.best_trial
        except ValueError:
            return None


def _plain(run_id: Any) -> Any:
    return run_id if isinstance(run_id, (int, str)) else str(run_id)


def _no_number(number: int, run_id: Any, result: Any, key: str | None) -> str:
    what = repr(result) if len(repr(result)) < 60 else repr(result)[:57] + "..."
    if key is None:
        hint = "; give --objective KEY (a key of a dict result, or a metric)"
        if isinstance(result, dict):
            keys = ", ".join(str(k) for k in list(result)[:5])
            hint = f"; give --objective KEY, one of: {keys}"
        return f"trial {number} (run {run_id}) returned {what}, no number to tune{hint}"
    return (
        f"trial {number} (run {run_id}) has no number as {key!r}: neither a key of its result "
        f"{what} nor a metric it logged; check --objective"
    )


def trial_item(base: Item, number: int, params: dict) -> Item:
    """The item of trial ``number``: ``exp.py::exp_svm[trial=3-C=0.512-gamma=0.0123]``."""
    text = "-".join([f"trial={number}", *(f"{k}={id_text(v)}" for k, v in params.items())])
    return attrs.evolve(
        base,
        nodeid=f"{base.nodeid}[{text}]",
        name=f"{base.name}[{text}]",
        params=dict(params),
        sweep=None,
    )


# --- the command ------------------------------------------------------------------------------


def _sweeps(option: Any) -> list[Sweep]:
    sweeps = [parse_sweep(text) for text in option.sweeps]
    keys = [s.key for s in sweeps]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--sweep {key}=... is given twice; give all its values in one")
    return sweeps


def _open_study(config: Any, name: str, url: str, space_text: dict, maximize: bool) -> tuple:
    storage, where = open_storage(url, config.rootdir)
    direction = "maximize" if maximize else "minimize"
    option = config.option
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        count = len(study.get_trials(deepcopy=False))
    except KeyError:
        study, count = None, 0
    seed = None if option.seed is None else option.seed + count  # no repeats on resume
    parallel = bool(option.numprocesses or option.dask)
    sampler = _sampler(option.sampler, seed, parallel)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=_pruner(option.pruner),
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise UsageError(
            f"study {name!r} in {where} looks for the {study.direction.name.lower()[:3]}imum; "
            f"this command for the {direction[:3]}imum: give --{study.direction.name.lower()}, "
            "or another --study NAME"
        )
    # The sampler may change between sessions (random first, then TPE); the search may not.
    defined = {"space": space_text, "objective": option.objective}
    before = study.user_attrs.get("expkit")
    note = None
    if before is not None and before != defined and not _has_counted_trials(study):
        # A search none of whose trials counts (a mistyped --objective stops it after its
        # first trial, which then does not count; Ctrl-C; a trial never run) found nothing
        # to keep: the corrected command takes the name over instead of being locked out.
        note = (
            f"study {name!r}: no trial of its earlier search ({_describe(before)}) counts; "
            "it takes this command's search"
        )
        before = None
    if before is None:
        study.set_user_attr("expkit", defined)
    elif before != defined:
        raise UsageError(
            f"study {name!r} in {where} was made by another search: {_describe(before)}; "
            f"this command asks for {_describe(defined)}: give the same options, or another "
            "--study NAME"
        )
    return study, where, note


def _has_counted_trials(study: Any) -> bool:
    """Whether a trial of ``study`` counts towards --trials, or runs (a live driver's)."""
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            return True
        if trial.state in _COUNTED and _UNCOUNTED not in trial.user_attrs:
            return True
    return False


def _describe(defined: dict) -> str:
    parts = [f"--sweep {k}={v}" for k, v in defined.get("space", {}).items()]
    if defined.get("objective"):
        parts.append(f"--objective {defined['objective']}")
    return " ".join(parts)


def tune(config: Any, started: Any = list) -> int:
    """``expkit tune NODEID ...``: run the study's trials up to ``--trials``.

    ``started()``: the ``-n`` worker processes started ahead (``workers.start_workers``).
    """
    from expkit.nodes import Session
    from expkit_plugins.session import collect, configure_logging, run_updates

    option = config.option
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the reporter says what happens
    if option.unobserved:
        raise UsageError("expkit tune stores every trial: drop -u")
    if option.trials is None:
        raise UsageError("say how many trials the study is to have: --trials N")
    if not option.sweeps:
        raise UsageError(
            "give the search space: --sweep KEY=DISTRIBUTION, e.g. --sweep 'C=loguniform(1e-3,1e3)'"
        )
    sweeps = _sweeps(option)
    grid = option.sampler == "grid"
    space, stand_ins = search_space(sweeps, grid)
    session = Session(config)
    config.session = session
    configure_logging(getattr(option, "verbose", 0))
    session.updates = run_updates(config)
    clash = sorted(set(session.updates) & set(space))
    if clash:
        raise UsageError(f"{clash[0]} is both fixed with -o and tuned with --sweep; drop one")
    collect(session, open_stores=True)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    hook = config.pluginmanager.hook
    if session.errors:
        if reporter is not None:
            reporter.header(session)
        hook.expkit_sessionfinish(session=session, exitstatus=ExitCode.INTERRUPTED)
        return ExitCode.INTERRUPTED
    if len(session.items) != 1:
        found = ", ".join(item.nodeid for item in session.items[:5]) or "none"
        raise UsageError(f"expkit tune takes one experiment, as FILE::NAME; found: {found}")
    base = session.items[0]
    _check_keys(base, session.updates, space, option)
    name = option.study or base.nodeid
    space_text = {s.key: text.partition("=")[2].strip() for s, text in zip(sweeps, option.sweeps)}
    opened = _open_study(config, name, session.store_urls[0], space_text, option.maximize)
    study, where, taken_over = opened
    tuner = Tuner(
        session=session,
        base=base,
        space=space,
        study=study,
        where=where,
        trials=option.trials,
        objective=option.objective,
        maximize=option.maximize,
        grid=grid_points(space) if grid else None,
        stand_ins=stand_ins,
    )
    report = TuneReport(tuner, taken_over)
    config.pluginmanager.register(report, "tune-report")
    session.items = []
    try:
        # First the trials an earlier session left running: "done before" counts them.
        tuner.settle()
        report.before = tuner.counts()[0]
        if reporter is not None and reporter.verbosity >= 0:
            reporter.header(session)
        if option.tune_timeout is not None:
            tuner.deadline = time.monotonic() + option.tune_timeout
        todo = tuner.left()
        # The reporter counts [k/N] from the items: one per trial this session means to run.
        session.items = [base] * todo
        if todo:
            _drive(tuner, todo, started)
    except KeyboardInterrupt:
        session.shouldstop = session.interrupted = True
    finally:
        left = list(tuner.running)  # asked, never told: Ctrl-C came between
        if left:
            tuner.settle(left, wait=False)
            session.interrupted = True
        session.items = session.items[: len(session.reports)]
    code = _exit_code(session, tuner)
    hook.expkit_sessionfinish(session=session, exitstatus=code)
    return code


def _check_keys(base: Item, updates: dict, space: dict, option: Any) -> None:
    """Refuse, before the study is made, a tuned key no function of the experiment takes."""
    from expkit.errors import ConfigAddedError
    from expkit.resolve import check_added_entries, resolve_config
    from expkit.run import find_command

    experiment = base.experiment
    first = {key: _first_value(dist) for key, dist in space.items()}
    try:
        summary = resolve_config(experiment, {**updates, **first}, list(option.named))
        if not option.force:
            main = find_command(experiment, experiment.default_command)
            check_added_entries(experiment, summary, [main, *experiment.extra_functions()])
    except ConfigAddedError as exc:
        unused = [k for k in exc.conflicting_configs if k in space]
        if not unused:
            raise UsageError(str(exc)) from None
        known = [a for a in exc.captured_args if a not in exc.SPECIAL_ARGS and a != "seed"]
        raise UsageError(
            f"--sweep {unused[0]}=...: no function of {base.nodeid} takes {unused[0]!r}; "
            f"its entries: {', '.join(known)} (-f tunes it anyway)"
        ) from None
    except ExpkitError as exc:
        raise UsageError(f"--sweep: {exc}") from None


def _first_value(dist: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    return dist.low


def _exit_code(session: Any, tuner: Tuner) -> ExitCode:
    from expkit_plugins.session import fails_session

    if session.interrupted:
        return ExitCode.INTERRUPTED
    if tuner.problem:
        return ExitCode.USAGE_ERROR
    if any(fails_session(r) or r.not_stored for r in session.reports):
        return ExitCode.RUNS_FAILED
    return ExitCode.OK


def _drive(tuner: Tuner, todo: int, started: Any) -> None:
    option = tuner.session.config.option
    if option.dask:
        DaskTrials(tuner.session, tuner).run()
    elif option.numprocesses:
        LocalTrials(tuner.session, option.numprocesses, tuner, started()).drive(todo)
    else:
        run_here(tuner)


# --- the ways to run trials -----------------------------------------------------------------


def run_here(tuner: Tuner) -> None:
    """Run the trials one after another in this process."""
    from expkit_plugins.session import fails_session, run_item

    session = tuner.session
    hook = session.config.pluginmanager.hook
    previous = set_asker(tuner.answer)
    try:
        while not session.shouldstop:
            trial = tuner.next(os.getpid())
            if trial is None:
                break
            item, point = trial
            hook.expkit_run_logstart(nodeid=item.nodeid)
            report = tuner.finished(run_item(session, item, point.meta))
            session.reports.append(report)
            hook.expkit_run_logreport(report=report)
            if session.config.option.exitfirst and fails_session(report):
                session.shouldstop = True
    finally:
        set_asker(previous)


class _Trials:
    """What the drivers of ``-n`` and ``--dask`` do differently for trials."""

    tuner: Tuner

    def has_next(self) -> bool:
        return self.tuner.has_next()

    def not_sent(self, item: Item) -> None:
        self.tuner.not_run(item)

    def answer(self, question: Any) -> Any:
        return self.tuner.answer(question)

    def _report(self, report: RunReport) -> None:
        super()._report(self.tuner.finished(report))  # type: ignore[misc]


class LocalTrials(_Trials, Driver):
    """Hands trials to ``-n`` local worker processes, a new one to each as it is free."""

    def __init__(self, session: Any, n: int, tuner: Tuner, started: list | None = None) -> None:
        super().__init__(session, n, started)
        self.tuner = tuner
        self.spec = trial_spec(session.config)

    def next_point(self, worker: Any) -> Any:
        return self.tuner.next(worker.proc.pid)


class DaskTrials(_Trials, DaskDriver):
    """Keeps one trial per Dask worker thread running, a new one as each ends."""

    def __init__(self, session: Any, tuner: Tuner) -> None:
        super().__init__(session)
        self.tuner = tuner

    def _run_on(self, client: Any, todo: list) -> None:
        spec = attrs.evolve(self._spec(), command="tune")  # the workers read tune's options
        workers = client.scheduler_info().get("workers", {})
        slots = sum(w.get("nthreads", 1) for w in workers.values()) or 1
        self._drive(client, spec, lambda: self.tuner.next(None), slots)

    def _stops(self) -> bool:
        return self.stopping or self.session.shouldstop

    def _finished(self, result: Any, item: Any, token: str) -> None:
        from distributed import CancelledError

        if isinstance(result, CancelledError):
            self.tuner.not_run(item)
            return
        super()._finished(result, item, token)


# --- what the terminal shows ------------------------------------------------------------------


class TuneReport:
    """The study's lines in the header and at the end of ``expkit tune``."""

    def __init__(self, tuner: Tuner, taken_over: str | None = None) -> None:
        self.tuner = tuner
        self.before = 0
        self.taken_over = taken_over  # why the study now has this command's search

    @hookimpl
    def expkit_report_header(self, config: Any) -> list[str]:
        tuner = self.tuner
        option = config.option
        label = tuner.objective or "result"
        direction = "maximize" if tuner.maximize else "minimize"
        pruner = option.pruner if tuner.objective else "none (no --objective metric)"
        lines = [
            f"study {tuner.study.study_name!r} in {tuner.where}: {self.before} of "
            f"{tuner.trials} trials done before",
            f"sampler {option.sampler}, pruner {pruner}; {direction} {label}",
        ]
        if self.taken_over:
            lines.insert(0, self.taken_over)
        return lines

    @hookimpl
    def expkit_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines():
            terminalreporter.write_line(line)

    def lines(self) -> list[str]:
        """The end of the session: the study's count, its best trial and how to rerun it."""
        tuner = self.tuner
        study = tuner.study
        states = dict.fromkeys(_COUNTED, 0)
        for trial in study.get_trials(deepcopy=False):
            if trial.state in _COUNTED and _UNCOUNTED not in trial.user_attrs:
                states[trial.state] += 1
        counted = sum(states.values())
        words = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned"}
        summary = ", ".join(f"{n} {words.get(s, 'failed')}" for s, n in states.items() if n)
        lines = [
            f"study {study.study_name!r}: {counted} of {tuner.trials} trials"
            + (f" ({summary})" if summary else "")
            + f", {tuner.told} in this session"
        ]
        if tuner.problem:
            lines.append(f"ERROR: {tuner.problem}")
        elif tuner.session.interrupted:
            lines.append("interrupted: the same command goes on with the study")
        elif not tuner.told and counted >= tuner.trials:
            lines.append(
                f"nothing to run: the study has its {counted} trials; a larger --trials goes on"
            )
        elif tuner.stopped == "timeout":
            seconds = tuner.session.config.option.tune_timeout
            lines.append(f"--timeout reached: no trial started after {seconds:g} s")
        best = tuner.best()
        if best is None:
            lines.append("best: none yet (no trial completed with a number)")
            return lines
        label = tuner.objective or "result"
        params = " ".join(f"{k}={id_text(v)}" for k, v in tuner.values(best.params).items())
        run_id = best.user_attrs.get(_RUN)
        direction = "highest" if tuner.maximize else "lowest"
        lines.append(
            f"best trial {best.number} ({direction} {label}): {params}  "
            f"{label}={best.value:.6g}" + ("" if run_id is None else f"  run {run_id}")
        )
        if run_id is not None:
            store = tuner.session.config.option.stores
            rerun = f"expkit rerun {run_id}" + (f" --store {store[0]}" if store else "")
            lines.append(f"rerun it: {rerun}")
        return lines


# --- importance ---------------------------------------------------------------------------------


def print_importance(config: Any) -> int:
    """``expkit tune --importance --study NAME``: each parameter's fANOVA importance."""
    from expkit.nodes import Session
    from expkit_plugins.session import collect, store_urls

    option = config.option
    name = option.study
    if name is None and option.paths:
        session = Session(config)
        config.session = session
        collect(session)
        if len(session.items) == 1:
            name = session.items[0].nodeid
    if name is None:
        raise UsageError("--importance needs the study: --study NAME (or the experiment's NODEID)")
    url = store_urls(config)[0]
    try:
        storage, where = open_storage(url, config.rootdir, create=False)
    except NoStorage as exc:
        # Only reading: a mistyped --store must not leave a study storage behind.
        raise UsageError(
            f"no study {name!r}: {exc}, so nothing was tuned with --store {redact_url(url)}; "
            "give the --store of the study's runs"
        ) from None
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = ", ".join(repr(n) for n in names[:10]) or "none"
        raise UsageError(f"no study {name!r} in {where}; the studies there: {known}") from None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        raise UsageError(
            f"study {name!r} has {len(complete)} completed trial(s); fANOVA needs 2 or more"
        )
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot weigh the parameters of study {name!r}: {exc}") from None
    print(f"parameter importance (fANOVA) in study {name!r}, {len(complete)} completed trials:")
    width = max((len(k) for k in importances), default=0)
    for key, value in importances.items():
        bar = "#" * round(value * 40)
        print(f"  {key:<{width}}  {value:.3f}  {bar}")
    return ExitCode.OK
