"""Making a run from an experiment and carrying it through its life.

A run's life: setup -> started -> heartbeats -> completed | failed | interrupted.
Each step fires the ``expkit_run_*`` hooks and the events of the Sacred-style
observers in ``run.observers``. Nothing a store does can stop the run: stores
are called through :class:`Delivery`, which reports a failing store once and
keeps the experiment going.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from expkit.captured import captured_state
from expkit.configuration import (
    ConfigSummary,
)
from expkit.errors import (
    CommandNotFoundError,
    ExpkitError,
    ExpkitInterrupt,
    UsageError,
)
from expkit.info import (
    ExperimentInfo,
    gather_experiment_info,
    gather_host_info,
    with_config_files,
)
from expkit.logs import LOG_KEEPERS, ConsoleLogHandler, log_level, root_logger
from expkit.observers import RunObserver, columns_to_sacred, utc_datetimes
from expkit.records import Artifact, MetricPoint, Resource
from expkit.resolve import check_added_entries, resolve_config
from expkit.serialize import NotStorableError, storable_problem, to_data, utcnow
from expkit.settings import SETTINGS
from expkit.signals import DeferredInterrupts, install_sigterm
from expkit.tracebacks import format_user_traceback
from expkit.utils import (
    CapturedOutput,
    file_md5,
    has_control_chars,
    printable,
    redact_url,
    suggest,
)

if TYPE_CHECKING:
    from expkit.experiment import Experiment
    from expkit.pluginmanager import PluginManager

QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED = (
    "QUEUED",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "INTERRUPTED",
)


@attrs.frozen
class RunOption:
    """An option of a run: ``ex.run(options={LONG: ...})`` and the script's flag ``SHORT``."""

    short: str
    long: str
    takes_value: bool
    help: str


# Sacred's options of a run, with their flags on the script's command line (plugins/script.py).
RUN_OPTIONS: tuple[RunOption, ...] = tuple(
    RunOption(*spec)
    for spec in [
        (
            "-b",
            "--beat-interval",
            True,
            "Heartbeat interval in seconds (0 or less: only one at the end).",
        ),
        ("-C", "--capture", True, "Output capture mode: fd, sys or no."),
        ("-c", "--comment", True, "A comment to store with the run."),
        ("-d", "--debug", False, "Show full tracebacks and let exceptions through (no filtering)."),
        ("-D", "--pdb", False, "Start the debugger after an exception."),
        (
            "-e",
            "--enforce_clean",
            False,
            "Refuse to run with uncommitted changes in the git repository.",
        ),
        ("-F", "--file_storage", True, "Store the run in this folder (file store)."),
        ("-f", "--force", False, "Allow added config entries no function uses, and type changes."),
        ("-h", "--help", False, "Show this help and exit."),
        ("-i", "--id", True, "The id of this run."),
        ("-l", "--loglevel", True, "Log level (a name such as DEBUG or a number)."),
        (
            "-m",
            "--mongo_db",
            True,
            "Store the run in MongoDB: [host:port:]db_name or a mongodb:// URL.",
        ),
        ("-n", "--name", True, "Store the run under this experiment name."),
        ("-P", "--priority", True, "Priority of a queued run (a number)."),
        ("-p", "--print-config", False, "Print the configuration before running."),
        ("-q", "--queue", False, "Only queue the run: record it as QUEUED without running it."),
        ("-S", "--s3", True, "Store the run in S3: s3://BUCKET/PATH."),
        ("-s", "--sql", True, "Store the run in an SQL database: an SQLAlchemy URL."),
        ("-t", "--tiny_db", True, "Store the run in a TinyDB folder."),
        ("-u", "--unobserved", False, "Run without storing anything."),
    ]
)
# Keys as Sacred spells its long flags; a flag's default is False, a value's None.
DEFAULT_OPTIONS: dict[str, Any] = {o.long: None if o.takes_value else False for o in RUN_OPTIONS}


# How often new metric points are delivered to the stores between heartbeats (seconds).
_METRICS_FLUSH_INTERVAL = 1.0
# The ints a metric value may be: what a float can hold (every store keeps floats).
_METRIC_INT_MIN, _METRIC_INT_MAX = -(2**1024), 2**1024


# --- making a run ---------------------------------------------------------------------


# The arguments a script's command line gives besides its flags, named as Sacred's docopt
# names them: an option hook may read them.
_SCRIPT_ARGUMENTS = ("COMMAND", "UPDATE", "help", "with")


def _options(options: Mapping | None) -> dict:
    result = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        named = key.startswith("--") or key in _SCRIPT_ARGUMENTS
        result[key if named else "--" + key] = value
    return result


def _mongo_url(arg: str) -> str:
    """Sacred's ``-m [host:port:]db_name`` (or a URL) as a MongoDB URL."""
    if "://" in arg:
        return arg
    arg = arg.split("!", 1)[0]
    parts = arg.split(":")
    if len(parts) == 1:
        return f"mongodb://localhost:27017/{parts[0]}"
    if len(parts) == 2:
        return f"mongodb://{parts[0]}:{parts[1]}/sacred"
    return f"mongodb://{parts[0]}:{parts[1]}/{parts[2].split('.', 1)[0]}"


def store_for_url(pm: PluginManager, url: str) -> Any:
    """The store a plugin makes for ``url``; a URL nobody claims, or a store that cannot be
    made, is a one-line usage error naming the store."""
    from expkit.store import StoreError, open_reader, open_store

    try:
        store = open_store(pm, url)
    except UsageError:
        raise
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # a plugin of the deprecated expkit_store_for_url hook
        reason = " ".join(str(exc).split()) or "no reason given"
        raise UsageError(
            f"cannot open the store {redact_url(url)!r}: {type(exc).__name__}: {redact_url(reason)}"
        ) from None
    # Kept so that events a failing store missed can be replayed into a new one.
    store._expkit_url = url
    store._expkit_factory = lambda: open_store(pm, url)
    # And a reader, to check that a run to resume there is still this run.
    store._expkit_reader = lambda: open_reader(pm, url)
    return store


def _stores_from_options(pm: PluginManager, options: dict) -> list:
    urls = []
    if options["--file_storage"]:
        urls.append(os.fspath(options["--file_storage"]))
    if options["--tiny_db"]:
        urls.append("tinydb://" + os.fspath(options["--tiny_db"]))
    if options["--mongo_db"]:
        urls.append(_mongo_url(options["--mongo_db"]))
    if options["--s3"]:
        if not str(options["--s3"]).startswith("s3://"):
            raise UsageError(f"-S/--s3 takes s3://BUCKET/PATH, not {options['--s3']!r}")
        urls.append(str(options["--s3"]))
    if options["--sql"]:
        urls.append(str(options["--sql"]))  # sqlite:///runs.db, postgresql://...: as Sacred's
    return [store_for_url(pm, url) for url in urls]


def _is_number(kind: type) -> bool:
    # A bool is an int to Python, but flag=1 for flag=True is worth a warning, as in Sacred.
    return issubclass(kind, (int, float)) and not issubclass(kind, bool)


def _is_store(observer: Any) -> bool:
    """Whether ``observer`` is one of the store layer's (it names run ids of its own)."""
    return getattr(observer, "storage", None) is not None


def _one_per_place(stores: list) -> list:
    """The stores, one for each place: a Sacred script's ``FileStorageObserver("runs")``
    under ``expkit run``, whose default store is ./runs too, records the run once.

    Only stores on this machine's files are told apart by URL: a server's observer may
    write where its URL does not say (``MongoObserver(url, db_name=...)``, ``client=``).
    """
    if len(stores) < 2:
        return stores
    from expkit.store import store_identity

    kept, places = [], set()
    for store in stores:
        url = getattr(getattr(store, "storage", None), "url", None)
        local = isinstance(url, str) and url and url.partition("://")[0] in (url, "file", "tinydb")
        place = store_identity(url) if local else id(store)
        if place not in places:
            places.add(place)
            kept.append(store)
    return kept


def builtin_commands(experiment: Experiment) -> dict[str, Callable]:
    """The commands every experiment has (print_config, ...), captured for this experiment."""
    cache = experiment.__dict__.setdefault("_builtin_commands", {})
    if not cache:
        from expkit.captured import capture

        for part in experiment.plugin_manager.hook.expkit_builtin_commands(experiment=experiment):
            for name, fn in (part or {}).items():
                captured = capture(fn, experiment)
                captured.unobserved = getattr(fn, "unobserved", False)
                cache[name] = captured
    return cache


def all_commands(experiment: Experiment) -> dict[str, Callable]:
    """Every command by name: the built-in ones, then the experiment's and its ingredients'."""
    commands = dict(builtin_commands(experiment))
    commands.update(experiment.gather_commands())
    return commands


def find_command(experiment: Experiment, name: str) -> Callable:
    """The command called ``name``: the experiment's own, an ingredient's, or a built-in one."""
    commands = all_commands(experiment)
    if name.startswith(experiment.path + "."):
        name = name[len(experiment.path) + 1 :]
    if name not in commands:
        raise CommandNotFoundError(
            f"command {name!r} not found{suggest(name, commands)}; commands: {', '.join(commands)}"
        )
    return commands[name]


def create_run(
    experiment: Experiment,
    command_name: str | None,
    config_updates: Mapping | None = None,
    named_configs: Sequence[str] = (),
    options: Mapping | None = None,
    info: Mapping | None = None,
    meta_info: Mapping | None = None,
    observers: Sequence = (),
) -> Run:
    """Build the configuration and the records of a run; nothing runs yet.

    ``observers`` are stores to add to the experiment's own ``ex.observers``.
    """
    pm = experiment.plugin_manager
    base_logger = root_logger(experiment)
    if experiment.logger is None and not base_logger.handlers:
        # As Sacred does: INFO lines like "Started run with ID ..." unless logging is set up.
        logging.basicConfig(handlers=[ConsoleLogHandler()], level=logging.INFO)
    options = _options(options)
    for option_hook in experiment.option_hooks:
        option_hook(options=options)
    if options["--loglevel"] is not None:
        base_logger.setLevel(log_level(options["--loglevel"]))
    if command_name is None:
        raise CommandNotFoundError(
            f"experiment {experiment.name!r} has no main function: decorate one with @ex.main"
        )
    main_function = find_command(experiment, command_name)
    summary = resolve_config(experiment, config_updates, named_configs, command_name)
    if not options["--force"]:
        check_added_entries(experiment, summary, [main_function, *experiment.extra_functions()])
        for path in sorted(summary.added):
            base_logger.getChild(experiment.path).warning('Added new config entry: "%s"', path)
        for path, (old, new) in summary.typechanged.items():
            if not (_is_number(old) and _is_number(new)):
                base_logger.getChild(experiment.path).warning(
                    'Changed type of config entry "%s" from %s to %s',
                    path,
                    old.__name__,
                    new.__name__,
                )
    unobserved = bool(options["--unobserved"] or getattr(main_function, "unobserved", False))
    stores: list = []
    if not unobserved:
        stores = list(experiment.observers) + list(observers) + _stores_from_options(pm, options)
        stores = _one_per_place(stores)
    ex_info = gather_experiment_info(experiment)
    # A named config that is a file (a config file wins over a name, as in resolve_config).
    ex_info = with_config_files(ex_info, [n for n in named_configs if os.path.isfile(n)])
    if options["--name"]:
        ex_info = attrs.evolve(ex_info, name=options["--name"])
    if options["--enforce_clean"]:
        if not ex_info.repositories:
            raise ExpkitError("--enforce_clean: the experiment's code is in no git repository")
        dirty = [r.url for r in ex_info.repositories if r.dirty]
        if dirty:
            raise ExpkitError(f"--enforce_clean: uncommitted changes in {', '.join(dirty)}")
    meta: dict = {
        "command": command_name,
        "options": {k: redact_url(v) if isinstance(v, str) else v for k, v in options.items()},
        "named_configs": list(named_configs),
    }
    if config_updates is not None:
        meta["config_updates"] = to_data(dict(config_updates))
    if options["--comment"] is not None:
        meta["comment"] = options["--comment"]
    if summary.docs:
        # [path, doc] pairs: dotted paths as dict keys would be mangled by MongoDB.
        meta["config_docs"] = sorted([str(k), str(v)] for k, v in summary.docs.items())
    if options["--priority"] is not None:
        try:
            meta["priority"] = float(options["--priority"])
        except ValueError:
            raise UsageError(
                f"--priority must be a number, not {options['--priority']!r}"
            ) from None
    meta.update(meta_info or {})
    beat = options["--beat-interval"]
    if beat is not None:
        try:
            beat = float(beat)
        except ValueError:
            raise UsageError(f"--beat-interval must be a number of seconds, not {beat!r}") from None
    run = Run(
        experiment=experiment,
        command_name=command_name,
        main_function=main_function,
        config=dict(summary),
        config_modifications=summary,
        experiment_info=ex_info,
        host_info=gather_host_info(experiment),
        meta_info=meta,
        observers=sorted(stores, key=lambda o: -getattr(o, "priority", 0)),
        options=options,
        beat_interval=beat if beat is not None else SETTINGS.DEFAULT_BEAT_INTERVAL,
        capture_mode=options["--capture"] or _default_capture(experiment.plugin_manager, stores),
        info=dict(info or {}),
    )
    if isinstance(options["--id"], str) and has_control_chars(options["--id"]):
        raise UsageError(f"--id '{printable(options['--id'])}' holds control characters")
    run._id = options["--id"]
    for fn in [main_function, *run.pre_run_hooks, *run.post_run_hooks]:
        captured_state(fn).check_resolvable(run.config)
    experiment.check_resolvable(run.config)
    return run


_OUTPUT_HOOKS = (
    "expkit_run_heartbeat",
    "expkit_run_completed",
    "expkit_run_failed",
    "expkit_run_interrupted",
)


def _default_capture(pm: pluggy.PluginManager, stores: list) -> str:
    """``SETTINGS.CAPTURE_MODE`` if anyone may want the output, else ``"no"``.

    As in Sacred, output is not captured for nobody; but besides stores, a plugin of the
    user's (not a built-in one) that implements a run hook may read ``run.captured_out``.
    """
    if stores:
        return SETTINGS.CAPTURE_MODE
    infos = getattr(pm, "infos", {})
    for name in _OUTPUT_HOOKS:
        for impl in getattr(pm.hook, name).get_hookimpls():
            info = infos.get(impl.plugin_name)
            if info is None or info.origin != "builtin":
                return SETTINGS.CAPTURE_MODE
    return "no"


# --- delivering events to stores -------------------------------------------------------


class Delivery:
    """Calls the stores and plugins of a run; neither can stop it (see :mod:`expkit.delivery`)."""

    def __init__(self, run: Run, observers: list) -> None:
        self.run = run
        self.guards: list = []
        if observers:
            # Imported only for runs with stores: the spool's modules cost a run without any.
            from expkit.delivery import GuardedStore

            self.guards = [
                GuardedStore(
                    obs, getattr(obs, "_expkit_url", None), getattr(obs, "_expkit_factory", None)
                )
                for obs in observers
            ]
        self.log = logging.getLogger("expkit")

    def call(self, method: str, **kwargs: Any) -> None:
        """Deliver the event ``method`` to every store."""
        for guard in self.guards:
            guard.call(method, kwargs)

    def metrics(self, columns: dict[str, dict], info: dict) -> None:
        """Deliver new metric points: as columns where a store takes them, else as Sacred's."""
        sacred = None  # one copy in Sacred's shape, a datetime per point, shared
        for guard in self.guards:
            own = getattr(type(guard.store), "log_metric_columns", RunObserver.log_metric_columns)
            if own is not RunObserver.log_metric_columns:
                guard.call("log_metric_columns", {"columns": columns, "info": info})
                continue
            if sacred is None:
                sacred = columns_to_sacred(columns)
            guard.call("log_metrics", {"metrics_by_name": sacred, "info": info})

    def finish(self) -> None:
        """Give failed stores a last chance; what they still miss stays spooled."""
        for guard in self.guards:
            guard.finish()

    def hook(self, name: str, **kwargs: Any) -> None:
        """Fire the plugin hook ``name``; an exception there is reported, never raised."""
        try:
            getattr(self.run.plugin_manager.hook, name)(run=self.run, **kwargs)
        except ExpkitInterrupt:
            raise  # the user's interrupt landed in a plugin: it is meant for the run
        except Exception as exc:
            self.log.warning("a plugin failed in %s: %s", name, exc)


# --- the run --------------------------------------------------------------------------


class Run:
    """One execution of an experiment's command with a fixed configuration."""

    def __init__(
        self,
        experiment: Experiment,
        command_name: str,
        main_function: Callable,
        config: dict,
        config_modifications: ConfigSummary,
        experiment_info: ExperimentInfo,
        host_info: dict,
        meta_info: dict,
        observers: list,
        options: dict,
        beat_interval: float,
        capture_mode: str,
        info: dict,
    ) -> None:
        self.experiment = experiment
        self.plugin_manager = experiment.plugin_manager
        self.command_name = command_name
        self.main_function = main_function
        self.config = config
        self.config_modifications = config_modifications
        self.experiment_record = experiment_info
        self.experiment_info = experiment_info.as_sacred()
        self.host_info = host_info
        self.meta_info = meta_info
        self.observers = observers
        self.options = options
        self.beat_interval = beat_interval
        self.capture_mode = capture_mode
        self.info = info
        self._id: Any = None
        self.status: str | None = None
        self.result: Any = None
        self.start_time: datetime.datetime | None = None
        self.stop_time: datetime.datetime | None = None
        self.heartbeat_time: datetime.datetime | None = None
        self.fail_trace: list[str] | None = None
        self.queue_only = bool(options.get("--queue"))
        self.debug = bool(options.get("--debug"))
        self.artifacts: list[Artifact] = []
        self.resources: list[Resource] = []
        # Deepest ingredients first, the experiment last.
        levels = sorted(experiment.traverse_ingredients(), key=lambda item: -item[1])
        self.pre_run_hooks = [f for ing, _ in levels for f in ing.pre_run_hooks]
        self.post_run_hooks = [f for ing, _ in levels for f in ing.post_run_hooks]
        self.root_logger = root_logger(experiment)
        self.run_logger = self.root_logger.getChild(experiment_info.name)
        # Asked before output capture replaces stdout: commands colour their output by it.
        self.stdout_is_terminal = sys.stdout.isatty()
        self._output = CapturedOutput(experiment.captured_out_filter)
        # Per metric name, its points not yet delivered and the next implicit step.
        self._series: dict[str, _Series] = {}
        self._last_drained: dict[str, Any] = {}  # name -> last value already delivered
        # (metric name, step, total) of the last log_scalar(..., total=N): a progress display.
        self.progress: tuple[str, int, int] | None = None
        self._capture: Any = None
        self._beat_lock = threading.Lock()
        self._stop_beat = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._unstorable_warned: set[str] = set()  # info entries already reported
        self._delivery = Delivery(self, self.observers)
        self._started = False
        self._thread: int | None = None

    # --- what the experiment calls ----------------------------------------------------

    @property
    def stored(self) -> list:
        """Where the run went, one :class:`expkit.delivery.StoreOutcome` per store."""
        return [guard.outcome() for guard in self._delivery.guards]

    @property
    def captured_out(self) -> str:
        """Everything the run printed so far, through ``ex.captured_out_filter``."""
        return self._output.text

    def log_scalar(
        self, metric_name: str, value: Any, step: int | None = None, *, total: int | None = None
    ) -> None:
        """Record a metric value; without ``step`` the metric's own counter is used.

        ``total``: how many steps the run will log in all (steps count from 0), so that a
        terminal shows a progress bar with the time left.
        """
        series = self._series.get(metric_name)
        if series is None:
            series = self._series.setdefault(metric_name, _Series())
        if step is None:
            step = series.next_step
        series.next_step = step + 1
        if total is not None:
            self.progress = (metric_name, step, total)
        if type(value) is not float and (
            type(value) is not int or not _METRIC_INT_MIN < value < _METRIC_INT_MAX
        ):
            value = _metric_number(metric_name, value)
        # One extend: atomic, so points logged from several threads never interleave.
        series.points.extend((step, value, time.time()))

    def add_artifact(
        self,
        filename: str | os.PathLike,
        name: str | None = None,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Keep ``filename`` with the run under ``name`` (default: its base name)."""
        path = os.path.abspath(os.fspath(filename))
        if not os.path.isfile(path):
            raise UsageError(f"add_artifact: {path} is not a file")
        name = name or os.path.basename(path)
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or ".." in parts or not all(parts):
            raise UsageError(
                f"artifact name {name!r} must be a relative path inside the run's folder "
                "(no '..', no leading '/')"
            )
        problem = None if metadata is None else storable_problem(metadata)
        if problem is not None:
            raise UsageError(f"add_artifact: the metadata of {name!r} cannot be stored: {problem}")
        artifact = Artifact(name, path, metadata, content_type)
        self.artifacts.append(artifact)
        self._delivery.call(
            "artifact_event",
            name=artifact.name,
            filename=path,
            metadata=metadata,
            content_type=content_type,
        )
        self._delivery.hook("expkit_artifact_added", artifact=artifact)

    def add_resource(self, filename: str | os.PathLike) -> None:
        """Record ``filename`` as an input of the run (stored once per content)."""
        path = os.path.abspath(os.fspath(filename))
        if any(r.path == path for r in self.resources):
            return
        resource = Resource(path, file_md5(path))
        self.resources.append(resource)
        self._delivery.call("resource_event", filename=path)
        self._delivery.hook("expkit_resource_added", resource=resource)

    def open_resource(self, filename: str | os.PathLike, mode: str = "r") -> Any:
        """Open ``filename`` and record it as a resource."""
        self.add_resource(filename)
        return open(filename, mode)

    # --- running ------------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        """Run the main function with ``args`` and return its result."""
        if self._started:
            raise RuntimeError("A run can only be started once: make a new one with ex.run()")
        self._started = True
        if self.queue_only:
            return self._queue()
        return self._execute(args)

    def _queue(self) -> None:
        self.status = QUEUED
        queue_time = utcnow()
        self.meta_info["queue_time"] = queue_time
        self._send_first("queued_event", queue_time=queue_time)
        self._delivery.hook("expkit_run_queued")
        self._delivery.finish()
        self.run_logger.info('Queued-up run with ID "%s"', self._id)

    def _send_first(self, event: str, **times: Any) -> None:
        # In priority order: the first store that names an id names the run, and other
        # observers are told it, as in Sacred. A store names its own, unless the run was
        # given one (--id): the first store's id may be taken in a store whose history
        # differs, which then refused the run.
        given = self._id
        for guard in self._delivery.guards:
            _id = given if _is_store(guard.store) else self._id
            named = guard.call(event, {**self._start_args(), "_id": _id, **times})
            if named is not None and self._id is None:
                self._id = named

    def _start_args(self) -> dict:
        return {
            "ex_info": copy.deepcopy(self.experiment_info),
            "command": self.command_name,
            "host_info": self.host_info,
            "config": self.config,
            "meta_info": self.meta_info,
            "_id": self._id,
        }

    def _bind(self) -> list:
        bound = [
            fn for ing, _ in self.experiment.traverse_ingredients() for fn in ing.captured_functions
        ]
        if self.main_function not in bound:
            bound.append(self.main_function)  # a built-in command (print_config, ...)
        for fn in bound:
            captured_state(fn).bind(self)
        return bound

    def _execute(self, args: tuple) -> Any:
        pm = self.plugin_manager
        experiment = self.experiment
        running = experiment.current_run
        if running is not None and running._thread != threading.get_ident():
            # Captured functions hold one binding each: two runs at once would mix configs.
            raise ExpkitError(
                f"experiment {experiment.name!r} is already running in another thread; "
                "run it in another process, or make one Experiment per thread"
            )
        self._thread = threading.get_ident()
        # Seeding and other set-up come first: a run they refuse never starts.
        pm.hook.expkit_run_setup(run=self)
        previous_run, experiment.current_run = experiment.current_run, self
        bound: list = []
        try:
            bound = self._bind()
            self._capture = pm.hook.expkit_make_capture(run=self, mode=self.capture_mode)
        except BaseException:
            self._unbind(bound, previous_run)
            raise
        old_handler = install_sigterm()
        outcome: BaseException | None = None
        try:
            # Where Sacred warns: before the output capture and the "Running command" line.
            quiet = self.options.get("--unobserved") or self.debug
            if not self.observers and not quiet:
                if not getattr(self.main_function, "unobserved", False):
                    self.run_logger.warning("No observers have been added to this run")
            if self._capture is not None:
                self._capture.start()
                if hasattr(self._capture, "keep"):
                    LOG_KEEPERS.append(self._capture.keep)
            self.status = RUNNING
            self.start_time = utcnow()
            self.run_logger.info("Running command '%s'", self.command_name)
            # A store's start is written whole or not at all: an interrupt waits for it
            # (or stops a store's wait for a lock, before it writes; see raise_deferred).
            starting = DeferredInterrupts(stoppable=True)
            try:
                self._send_first("started_event", start_time=self.start_time)
            finally:
                starting.restore()
            late = starting.interrupt()
            if late is not None:
                raise late
            self._delivery.hook("expkit_run_started")
            if self._id is not None:
                self.run_logger.info('Started run with ID "%s"', self._id)
            else:
                self.run_logger.info("Started")
            self._start_heartbeat()
            for hook_fn in self.pre_run_hooks:
                hook_fn()
            self.result = self.main_function(*args)
            for hook_fn in self.post_run_hooks:
                hook_fn()
            self._refuse_unstorable()
            if self.result is not None:
                self.run_logger.info("Result: %s", self.result)
            self.status = COMPLETED
        except (KeyboardInterrupt, ExpkitInterrupt) as exc:
            self.status = getattr(exc, "STATUS", INTERRUPTED)
            outcome = exc
        except NotStorableError as exc:
            self.status = FAILED
            self.fail_trace = traceback.format_exception_only(type(exc), exc)  # no user frames
            outcome = exc
        except BaseException as exc:
            self.status = FAILED
            self.fail_trace = format_user_traceback(exc)
            outcome = exc
        finally:
            # From here Ctrl-C and SIGTERM are only noted: the stores must hear how the run
            # ended (a KeyboardInterrupt would pass every guard of _finish and leave it RUNNING).
            deferred = DeferredInterrupts(old_handler)
            try:
                self._finish(bound, previous_run)
            finally:
                deferred.restore()
        late = deferred.interrupt()
        if late is not None and not isinstance(outcome, KeyboardInterrupt):
            raise late from outcome  # an interrupted run is told once, by its own outcome
        if outcome is not None:
            raise outcome
        return self.result

    def _refuse_unstorable(self) -> None:
        """Fail the run when its result or an info entry cannot be stored (instead of
        leaving it RUNNING in stores that cannot write it)."""
        problem = storable_problem(self.result)
        if problem is not None:
            self.result = None
            raise NotStorableError(f"the result cannot be stored: {problem}")
        problems = _storable_info(_snapshot(self.info))[1]
        if problems:
            what, problem = next(iter(problems.items()))
            raise NotStorableError(f"{what} cannot be stored: {problem}")

    def _finish(self, bound: list, previous_run: Run | None) -> None:
        # Every step is guarded: whatever fails here, the stores still hear how the run
        # ended and the captured functions are released.
        try:
            self.stop_time = utcnow()
            self._stop_beat.set()
            # ident: started (Ctrl-C may land between making the thread and starting it).
            if self._beat_thread is not None and self._beat_thread.ident is not None:
                self._beat_thread.join(timeout=max(self.beat_interval, 1.0) + 5.0)
            elapsed = self.stop_time - (self.start_time or self.stop_time)
            if self.status == COMPLETED:
                self.run_logger.info("Completed after %s", _elapsed(elapsed))
            elif self.status == FAILED:
                self.run_logger.error("Failed after %s!", _elapsed(elapsed))
            else:
                self.run_logger.warning("Aborted after %s!", _elapsed(elapsed))
            if self._capture is not None:
                keep = getattr(self._capture, "keep", None)
                if keep in LOG_KEEPERS:
                    LOG_KEEPERS.remove(keep)
                with self._beat_lock:
                    _guarded(self._capture.stop, "stopping the output capture")
                    _guarded(lambda: self._output.append(self._capture.read()), "reading output")
            _guarded(lambda: self._emit_heartbeat(final=True), "the last heartbeat")
            if self.status == COMPLETED:
                event = ("completed_event", {"stop_time": self.stop_time, "result": self.result})
                hook = "expkit_run_completed"
            elif self.status == FAILED:
                event = (
                    "failed_event",
                    {"fail_time": self.stop_time, "fail_trace": self.fail_trace},
                )
                hook = "expkit_run_failed"
            else:
                event = (
                    "interrupted_event",
                    {"interrupt_time": self.stop_time, "status": self.status},
                )
                hook = "expkit_run_interrupted"
            _guarded(lambda: self._delivery.call(event[0], **event[1]), "telling the stores")
            _guarded(lambda: self._delivery.hook(hook), "telling the plugins")
            _guarded(lambda: self._delivery.call("join"), "waiting for the stores")
            _guarded(self._delivery.finish, "retrying failed stores")
        finally:
            self._unbind(bound, previous_run)

    def _unbind(self, bound: list, previous_run: Run | None) -> None:
        for fn in bound:
            captured_state(fn).unbind()
        self.experiment.current_run = previous_run

    # --- heartbeats ---------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self.beat_interval <= 0:
            return
        self._beat_thread = threading.Thread(
            target=self._beat_loop, name=f"expkit-heartbeat-{self._id}", daemon=True
        )
        self._beat_thread.start()

    def _beat_loop(self) -> None:
        # Between heartbeats new metric points go out about once a second, so that a killed
        # process loses at most the last second of them.
        next_beat = time.monotonic() + self.beat_interval
        while True:
            wait = min(_METRICS_FLUSH_INTERVAL, next_beat - time.monotonic())
            if self._stop_beat.wait(max(wait, 0.0)):
                return
            if time.monotonic() >= next_beat:
                _guarded(lambda: self._emit_heartbeat(final=False), "a heartbeat")
                next_beat = time.monotonic() + self.beat_interval
            elif any(series.points for series in self._series.copy().values()):
                _guarded(self._flush_metrics, "delivering metrics")

    def _flush_metrics(self) -> None:
        with self._beat_lock:
            self._deliver_metrics(self._drain_metrics())

    def latest_metrics(self) -> dict[str, Any]:
        """The last value logged of each metric so far (for progress displays)."""
        latest = dict(self._last_drained)
        for name, series in self._series.copy().items():
            try:
                # Points are added and taken three items at once: [-2] is the last value.
                latest[name] = series.points[-2]
            except IndexError:
                pass
        return latest

    def _drain_metrics(self) -> dict[str, dict]:
        """The points logged since the last drain, as columns per name (epoch-second times)."""
        columns = {}
        for name, series in self._series.copy().items():
            points = series.points
            # Only the points there now: the run's thread may be adding more meanwhile.
            end = len(points)
            if end:
                columns[name] = {
                    "steps": points[0:end:3],
                    "values": points[1:end:3],
                    "timestamps": points[2:end:3],
                    "name": name,
                }
                self._last_drained[name] = points[end - 2]
                del points[:end]
        return columns

    def _emit_heartbeat(self, final: bool) -> None:
        with self._beat_lock:
            if self._capture is not None and not final:
                self._output.append(self._capture.read())
            self._deliver_metrics(self._drain_metrics())
            self.heartbeat_time = utcnow()
            text = self._output.text if final else self._output.stable_text
            info, problems = _storable_info(_snapshot(self.info))
            for what, problem in problems.items():
                if what not in self._unstorable_warned:
                    self._unstorable_warned.add(what)
                    logging.getLogger("expkit").warning("%s cannot be stored: %s", what, problem)
            self._delivery.call(
                "heartbeat_event",
                info=info,
                captured_out=text,
                beat_time=self.heartbeat_time,
                result=self.result,
            )
            self._delivery.hook("expkit_run_heartbeat")

    def _deliver_metrics(self, columns: dict[str, dict]) -> None:
        self._delivery.metrics(columns, self.info)
        if columns and self.plugin_manager.hook.expkit_log_metrics.get_hookimpls():
            import heapq

            series = [
                [
                    MetricPoint(name, step, value, at)
                    for step, value, at in zip(
                        s["steps"], s["values"], utc_datetimes(s["timestamps"])
                    )
                ]
                for name, s in columns.items()
            ]
            # Each metric's points in the order logged (even if the clock stepped back),
            # the metrics interleaved by time.
            points = list(heapq.merge(*series, key=lambda p: p.timestamp))
            self._delivery.hook("expkit_log_metrics", metrics=points)


def _metric_number(name: str, value: Any) -> int | float:
    """``value`` as a plain int or float; anything that is no number is refused."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        if _METRIC_INT_MIN < value < _METRIC_INT_MAX:
            return int(value)
        what = f"an int of {_digits(value)} digits, more than a float can hold"
    elif type(value).__module__ == "numpy":
        number = to_data(value)  # a numpy scalar or a 0-d array; a bigger array stays a list
        if isinstance(number, (int, float)):
            return _metric_number(name, number)
        what = f"a numpy {type(value).__name__}"
    else:
        what = type(value).__name__
        if hasattr(type(value), "__float__") and not isinstance(value, complex):
            try:
                return float(value)  # a Decimal, a Fraction, a one-element tensor, ...
            except (TypeError, ValueError, OverflowError):
                pass
    raise UsageError(f"log_scalar({name!r}, ...): the value must be a number, not {what}")


def _digits(number: int) -> int:
    """How many decimal digits ``number`` has, even past Python's int-to-text limit."""
    digits = int(abs(number).bit_length() * 0.30102999566398120) + 1
    return digits if abs(number) >= 10 ** (digits - 1) else digits - 1


class _Series:
    """The undelivered points of one metric, flat (step, value, time, step, ...)."""

    __slots__ = ("next_step", "points")

    def __init__(self) -> None:
        self.points: list = []
        self.next_step = 0


def _guarded(step: Callable[[], Any], what: str) -> None:
    """Do ``step``; an exception is logged, not raised (the end of a run must go on)."""
    try:
        step()
    except Exception as exc:
        logging.getLogger("expkit").error("%s failed: %s: %s", what, type(exc).__name__, exc)


def _snapshot(info: dict) -> dict:
    """A copy of ``info`` for the stores, taken while the run may still be changing it."""
    for _ in range(3):
        try:
            return copy.deepcopy(info)
        except RuntimeError:  # changed while being copied: try again
            continue
        except Exception:
            break
    return dict(info)


def _storable_info(info: Any) -> tuple[dict, dict[str, str]]:
    """``info`` with each entry no store could keep replaced by why; and, by what cannot be
    stored (``run.info['key']``), why."""
    if not isinstance(info, Mapping):
        return {}, {"run.info": f"it must be a dict, not {type(info).__name__}"}
    kept, problems = {}, {}
    for key, value in info.items():
        problem = storable_problem(value)
        if problem is None:
            kept[key] = value
        else:
            problems[f"run.info[{key!r}]"] = problem
            kept[key] = f"<not stored: {problem}>"
    return kept, problems


def _elapsed(delta: datetime.timedelta) -> str:
    return str(datetime.timedelta(seconds=round(delta.total_seconds())))
