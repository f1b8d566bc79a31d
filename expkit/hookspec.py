"""Hook specifications: every hook a plugin of expkit may implement.

Hooks are called with keyword arguments only. An implementation may accept a
subset of a hook's arguments, so new arguments can be added without breaking
plugins; arguments are never removed or renamed. Hooks marked *firstresult*
stop at the first implementation that returns something other than ``None``.

The run hooks (``expkit_run_*``, ``expkit_log_metrics``, ``expkit_artifact_added``,
``expkit_resource_added``) report what happens to a run; the core calls them
through a guard, so an exception raised there is reported once and never
reaches the experiment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from expkit.captured import CapturedFunction
    from expkit.cli import Config, Parser
    from expkit.experiment import Ingredient
    from expkit.nodes import CollectError, Item, LiveStatus, RunReport, Session
    from expkit.observers import RunObserver
    from expkit.pluginmanager import PluginManager
    from expkit.records import Artifact, ConfigDefault, MetricPoint, Resource
    from expkit.run import Run
    from expkit.store import StoreBackend, StoreReader

hookspec = pluggy.HookspecMarker("expkit")

# --- what plugins give each other ---------------------------------------------
# Their classes live in plugins, which the core never imports: these say what a hook
# may rely on, whichever plugin provides it.


class TerminalReporter(Protocol):
    """The plugin ``"terminalreporter"`` as :func:`expkit_terminal_summary` may use it."""

    config: Config
    verbosity: int  # 0, raised by -v and lowered by -q

    def write_line(self, text: str = "", colour: str | None = None) -> None:
        """Write one line, in ``colour`` (a colorama code) when the output is a terminal."""

    def sep(self, char: str, title: str = "", colour: str | None = None) -> None:
        """Write a line of ``char`` across the terminal, ``title`` in its middle."""


class Seeder(Protocol):
    """The seeds of one captured function, from :func:`expkit_function_seeder`."""

    def seed(self) -> int:
        """A new seed on every call."""

    def rnd(self, seed: int) -> Any:
        """A random generator seeded with ``seed`` (numpy's, else :class:`random.Random`)."""


class Capture(Protocol):
    """A run's output capture, from :func:`expkit_make_capture`."""

    def start(self) -> None:
        """Start capturing the output."""

    def read(self) -> str:
        """The text written since the last read."""

    def stop(self) -> None:
        """Stop capturing; the output goes where it went before."""


# --- set-up ------------------------------------------------------------------


@hookspec(historic=True)
def expkit_addhooks(pluginmanager: PluginManager) -> None:
    """Add new hook specifications with ``pluginmanager.add_hookspecs(module)``.

    Called once per plugin, when it is registered.
    """


@hookspec(historic=True)
def expkit_addoption(parser: Parser) -> None:
    """Add options to the ``expkit`` command line.

    ``parser`` is an :class:`argparse.ArgumentParser`-like object with
    ``addoption(*names, **kwargs)`` and ``getgroup(name)``. Called once per
    plugin before the command line is parsed; plugins registered later
    (``expconf.py``) are called when they are registered.
    """


@hookspec(historic=True)
def expkit_configure(config: Config) -> None:
    """Set up a plugin after the command line was parsed.

    ``config`` carries the parsed options (``config.option``), the project
    root and the plugin manager. Called once per plugin.
    """


@hookspec
def expkit_unconfigure(config: Config) -> None:
    """Tear down what :func:`expkit_configure` set up, before the process exits."""


@hookspec(firstresult=True)
def expkit_cmdline_main(config: Config) -> int | None:
    """Carry out the ``expkit`` command and return its exit code.

    Called once after :func:`expkit_configure`. *firstresult*.
    """


# --- collection and the session (the ``expkit`` command) ------------------------


@hookspec
def expkit_collect_file(path: Path, config: Config) -> list[Item | CollectError] | None:
    """Collect the experiments in the file ``path`` (a :class:`pathlib.Path`).

    Return a list of :class:`expkit.nodes.Item` and :class:`expkit.nodes.CollectError`,
    or ``None`` when the file is not yours. Called for every file the walk finds
    that matches the file patterns, and for every file named on the command line.
    """


@hookspec
def expkit_collection_modifyitems(config: Config, items: list[Item]) -> None:
    """Filter or reorder the collected ``items`` in place (``-k`` does this)."""


@hookspec
def expkit_deselected(items: list[Item]) -> None:
    """``items`` were deselected (by ``-k`` or another filter)."""


@hookspec
def expkit_collection_finish(session: Session) -> None:
    """Collection is done: ``session.items`` and ``session.errors`` are final."""


@hookspec(firstresult=True)
def expkit_runtestloop(session: Session) -> bool | None:
    """Run every item of ``session``; return ``True`` when done. *firstresult*."""


@hookspec
def expkit_run_logstart(nodeid: str) -> None:
    """The item ``nodeid`` starts running, in this process or on a worker."""


@hookspec
def expkit_run_livestatus(status: LiveStatus) -> None:
    """News from an item running on a worker: ``status`` is a :class:`expkit.nodes.LiveStatus`.

    The worker loops (``-n``, ``--dask``) call it about once a second per running item;
    progress displays show it.
    """


@hookspec
def expkit_run_logreport(report: RunReport) -> None:
    """An item finished: ``report`` is a :class:`expkit.nodes.RunReport`."""


@hookspec
def expkit_report_header(config: Config) -> list[str] | None:
    """Return lines the terminal reporter prints in its header."""


@hookspec
def expkit_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int) -> None:
    """Add a section to the terminal summary, before the closing line.

    ``terminalreporter`` writes the section (see :class:`TerminalReporter`); ``exitstatus``
    is the session's exit code. Called once, at the end of an ``expkit`` session, after
    the failures and stores are listed.
    """


@hookspec
def expkit_sessionfinish(session: Session, exitstatus: int) -> None:
    """Every item ran (or the session was stopped); ``exitstatus`` is the exit code."""


# --- experiments and configuration --------------------------------------------


@hookspec(firstresult=True)
def expkit_load_config_file(path: str) -> dict | None:
    """Read a configuration file (JSON, TOML, YAML, ...) and return its entries.

    Called for ``add_config("file.json")`` and for ``with file.yaml``. Return
    ``None`` when the file's format is not yours. *firstresult*.
    """


@hookspec
def expkit_config_defaults(experiment: Ingredient) -> list[ConfigDefault] | None:
    """Return root entries to add to a run's configuration unless already set.

    Called when a run's configuration is built, after the config scopes ran.
    The seeding plugin adds ``seed`` here.
    """


@hookspec
def expkit_experiment_info(experiment: Ingredient) -> dict | None:
    """Return entries for the run's experiment record.

    Keys as in Sacred's ``experiment`` document: ``sources`` (a list of
    :class:`expkit.records.Source`), ``dependencies`` (a list of
    :class:`expkit.records.Dependency`), ``repositories`` (a list of
    :class:`expkit.records.Repository`). The returned lists are joined.
    Called once per run, before it starts.
    """


@hookspec
def expkit_host_info(experiment: Ingredient) -> dict | None:
    """Return entries for the run's host record (``hostname``, ``cpu``, ...).

    The returned dicts are merged. Called once per run, before it starts.
    """


@hookspec
def expkit_builtin_commands(experiment: Ingredient) -> dict | None:
    """Return ``{name: function}`` of commands every experiment offers.

    The functions are captured like ``@ex.command``; an attribute
    ``unobserved = True`` on a function keeps its runs out of the stores.
    A command the experiment defines itself wins over these.
    """


@hookspec(firstresult=True)
def expkit_run_commandline(experiment: Ingredient, argv: list[str]) -> Run | None:
    """Parse a script's own command line (``python exp.py ...``) and carry it out.

    Return the :class:`expkit.run.Run` it made; help and mistakes end the process
    instead (``SystemExit``). *firstresult*.
    """


# --- stores -------------------------------------------------------------------


@hookspec
def expkit_store_backends() -> list[StoreBackend] | None:
    """Return the kinds of store this plugin provides (:class:`expkit.store.StoreBackend`).

    A backend names the URL schemes it claims and opens a :class:`expkit.store.Storage`
    for a claimed URL; the core records runs into it and reads them back (``expkit
    runs``, ``rerun``, ``sync``, ``ui``) through the store layer. The first backend
    that claims a URL wins. Called whenever a store URL is resolved.
    """


@hookspec(firstresult=True)
def expkit_store_for_url(url: str) -> RunObserver | None:
    """Deprecated: declare a backend with :func:`expkit_store_backends` instead.

    Return a store (an :class:`expkit.observers.RunObserver`) for ``url``.

    Return ``None`` when the URL's scheme is not yours. A plain path is
    offered as it is, without a scheme. *firstresult*.
    """


@hookspec(firstresult=True)
def expkit_reader_for_url(url: str) -> StoreReader | None:
    """Deprecated: declare a backend with :func:`expkit_store_backends` instead.

    Return a reader of the runs stored at ``url`` (a :class:`expkit.store.StoreReader`,
    or an object with the methods below), or ``None`` when the URL is not yours. Called
    whenever a store URL no backend claims is read.

    A reader has ``list_runs() -> Iterable[RunRecord]`` (summaries, without
    ``captured_out`` and ``metrics``), ``get_run(run_id) -> RunRecord`` (everything),
    ``read_source(run_id, name) -> bytes`` (a stored source file by its relative name),
    ``read_artifact(run_id, name) -> bytes``, ``read_resource(run_id, path) -> bytes``
    (a stored input file by its original path) and ``delete_run(run_id)``; an unknown id
    or name raises :class:`KeyError`. See :class:`expkit.records.RunRecord`.

    A reader whose store can be edited also has ``edit_run(run_id, *, comment=None,
    tags=None)``: it stores ``comment`` (a string) as the run's ``meta.comment`` and
    ``tags`` (a list of strings) as ``meta.tags``; ``None`` leaves a field as it is and an
    empty value removes it (:func:`expkit.records.edited_meta`). ``expkit ui`` edits runs
    through it and shows the runs of readers without it read-only. *firstresult*.
    """


@hookspec
def expkit_store_schemes() -> list[str] | None:
    """Deprecated, as :func:`expkit_store_for_url`: the URL schemes its stores claim."""


@hookspec(firstresult=True)
def expkit_observer_class(name: str) -> type | None:
    """Return the Sacred-style observer class called ``name``, if it is yours.

    Lets ``from expkit.observers import FileStorageObserver`` work while the
    store lives in a plugin. *firstresult*.
    """


# --- a run's life -------------------------------------------------------------


@hookspec(firstresult=True)
def expkit_function_seeder(run: Run, function: CapturedFunction) -> Seeder | None:
    """Return the :class:`Seeder` that gives ``function`` its ``_seed`` and ``_rnd``.

    A seeder has ``seed() -> int`` (a new seed on every call) and
    ``rnd(seed) -> generator``. Called once per captured function and run,
    the first time the function asks for ``_seed`` or ``_rnd``. *firstresult*.
    """


@hookspec(firstresult=True)
def expkit_make_capture(run: Run, mode: str) -> Capture | None:
    """Return a :class:`Capture` of the run's output for ``mode`` (``"fd"``, ``"sys"`` or ``"no"``).

    A capture has ``start()``, ``read() -> str`` (the text written since the
    last read) and ``stop()``; it may have ``keep(text)``, which adds log lines
    the terminal does not show to the captured output. Called once per run,
    before it starts. *firstresult*.
    """


@hookspec
def expkit_run_setup(run: Run) -> None:
    """Prepare the process for ``run``: called right before it starts.

    The seeding plugin seeds the global random generators here. May raise to
    stop the run before it starts.
    """


@hookspec
def expkit_run_queued(run: Run) -> None:
    """``run`` was queued (``-q``) instead of started."""


@hookspec
def expkit_run_started(run: Run) -> None:
    """``run`` started: its config, host and experiment records are final."""


@hookspec
def expkit_run_heartbeat(run: Run) -> None:
    """Called every ``run.beat_interval`` seconds while ``run`` runs, and once at its end.

    ``run.info``, ``run.result`` and ``run.captured_out`` are current.
    """


@hookspec
def expkit_run_completed(run: Run) -> None:
    """``run`` returned normally; ``run.result`` holds its result."""


@hookspec
def expkit_run_failed(run: Run) -> None:
    """``run`` raised; ``run.fail_trace`` holds the traceback lines."""


@hookspec
def expkit_run_interrupted(run: Run) -> None:
    """``run`` was interrupted (Ctrl-C, SIGTERM, an interrupt exception); see ``run.status``."""


@hookspec
def expkit_log_metrics(run: Run, metrics: list[MetricPoint]) -> None:
    """New metric points of ``run``, delivered in batches at each heartbeat.

    Each metric's points come in the order they were logged; the metrics are interleaved
    by time.
    """


@hookspec
def expkit_artifact_added(run: Run, artifact: Artifact) -> None:
    """``run`` added an artifact (a file to keep with the run)."""


@hookspec
def expkit_resource_added(run: Run, resource: Resource) -> None:
    """``run`` opened or added a resource (an input file)."""
