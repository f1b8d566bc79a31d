"""The ``expkit run`` command: collect, select, run, report.

Every collected experiment runs once, with the ``-o`` overrides and ``-w`` named
configs, into the stores given with ``--store`` (default: ``runs/`` under the
project root). Exit codes are pytest's: 0 all completed, 1 some run failed,
2 interrupted (also: collection errors), 4 usage error, 5 nothing collected.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from expkit.discovery import find_experiment_files, split_node_id
from expkit.errors import ExpkitError, UsageError
from expkit.logs import ConsoleLogHandler
from expkit.nodes import CollectError, ExitCode, Item, RunReport, Session
from expkit.pluginmanager import hookimpl
from expkit.run import FAILED, INTERRUPTED, create_run, store_for_url
from expkit.settings import CAPTURE_MODES
from expkit.tracebacks import format_user_traceback
from expkit.utils import parse_literal

SKIPPED = "SKIPPED"


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand("run", "run [PATH|NODEID ...]", "run the experiments found, record every run")
    # `expkit --collect-only --help` is `expkit run --help`.
    parser.addcommand(
        "--collect-only", "--collect-only [PATH ...]", "list what 'expkit run' would run"
    )
    group = parser.getgroup("running", "choosing and running experiments")
    group.addoption("paths", nargs="*", metavar="PATH|NODEID", help="files, folders or node ids")
    group.addoption(
        "-o",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config entry (a Python literal; a bare word is a string); repeatable",
    )
    group.addoption(
        "-w",
        "--with",
        dest="named",
        action="append",
        default=[],
        metavar="NAMED",
        help="apply a named config or a config file, in order; -o wins over it",
    )
    group.addoption(
        "--store",
        dest="stores",
        action="append",
        default=[],
        metavar="URL",
        help="store runs there (a folder, file://, tinydb://, mongodb://); repeatable",
    )
    group.addoption("-u", "--unobserved", action="store_true", help="store nothing")
    group.addoption(
        "-f",
        "--force",
        action="store_true",
        help="allow -o entries no function uses, and changes of an entry's type; "
        "rerun: a stored source that no longer matches its md5",
    )
    group.addoption(
        "--capture",
        choices=CAPTURE_MODES,
        default=None,
        help="output capture: fd (also C code and children), sys or no",
    )
    group.addoption("--seed", type=int, default=None, help="the root seed of every run")
    group.addoption("--comment", default=None, help="a comment stored with every run")
    group.addoption("-x", "--exitfirst", action="store_true", help="stop after the first failure")
    group.addoption(
        "--collect-only",
        "--co",
        dest="collect_only",
        action="store_true",
        help="only list what would run",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["C=3", "dataset.path=x.csv"]`` as ``{"C": 3, "dataset.path": "x.csv"}``."""
    updates: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"malformed -o {pair!r}: write -o KEY=VALUE, e.g. -o C=3")
        if any(not part.isidentifier() for part in key.split(".")):
            raise UsageError(f"malformed -o {pair!r}: {key!r} is not a config key")
        try:
            updates[key] = parse_literal(value.strip())
        except ValueError as exc:
            raise UsageError(f"malformed -o {pair!r}: {exc}") from None
    return updates


def run_updates(config: Any) -> dict[str, Any]:
    """The config updates every run of the session gets: ``-o`` entries and ``--seed``."""
    updates = parse_overrides(config.option.overrides)
    if config.option.seed is not None:
        updates["seed"] = config.option.seed
    return updates


def collect(session: Session, open_stores: bool = False) -> None:
    """Find the files, collect their items, apply node-id selection and ``-k``.

    ``open_stores`` makes the session's stores once the ``expconf.py`` files (which may
    add store plugins) are loaded, and before the header: a store URL nobody claims stops
    the session there."""
    config = session.config
    args = list(config.option.paths) or [str(config.rootdir / p) for p in config.settings.paths]
    wanted: dict[Path, set[str] | None] = {}
    for arg in args:
        path_part, name = split_node_id(arg)
        path = (config.invocation_dir / path_part).resolve()
        if not path.exists():
            raise UsageError(f"file or directory not found: {arg}")
        for file in find_experiment_files([path], config.settings.file_patterns):
            file = file.resolve()
            if name is None or wanted.get(file, set()) is None:
                wanted[file] = None
            else:
                wanted.setdefault(file, set()).add(name)  # type: ignore[union-attr]
    hook = config.pluginmanager.hook
    for file, names in wanted.items():
        failed = False
        for result in hook.expkit_collect_file(path=file, config=config):
            for node in result or ():
                if isinstance(node, CollectError):
                    session.errors.append(node)
                    failed = True
                elif names is None or node.name in names or node.originalname in names:
                    session.items.append(node)
        if names and not failed:  # a file that failed to import says why, as an error
            found = {n for i in session.items if i.path == file for n in (i.name, i.originalname)}
            for name in sorted(names - found):
                raise UsageError(f"no experiment {name!r} in {file.name}")
    before = list(session.items)
    hook.expkit_collection_modifyitems(config=config, items=session.items)
    kept = {id(item) for item in session.items}  # identity: comparing attrs items is slow
    session.deselected = [i for i in before if id(i) not in kept]
    if session.deselected:
        hook.expkit_deselected(items=session.deselected)
    if open_stores:
        _stores(session)
    hook.expkit_collection_finish(session=session)


def store_urls(config: Any) -> list[str]:
    """Where the session's runs go: ``--store``, else ``[tool.expkit] store``, else ./runs."""
    urls = list(config.option.stores)
    if not urls and config.settings.store:
        # A folder written in pyproject.toml is relative to the project root, like `paths`.
        store = config.settings.store
        urls = [store if "://" in store else str(config.rootdir / store)]
    return urls or [str(config.rootdir / "runs")]


def _stores(session: Session) -> None:
    config = session.config
    if config.option.unobserved:
        if config.option.stores:
            raise UsageError("-u/--unobserved stores nothing, yet --store says where to: drop one")
        return
    session.store_urls = store_urls(config)
    session.stores = [store_for_url(config.pluginmanager, url) for url in session.store_urls]


def run_item(session: Session, item: Item, meta: dict | None = None) -> RunReport:
    """Run one item with the session's overrides; never raises for the experiment's sake.

    A point of a sweep runs with its own entries on top, and ``meta.sweep`` says where it
    stands in the sweep. Ctrl-C stops the run (stored as INTERRUPTED) and sets
    ``session.interrupted``. ``meta`` adds entries to the run's ``meta``.
    """
    if item.skip is not None:
        skip = item.skip
        return RunReport(
            item.nodeid, SKIPPED, 0.0, run_id=skip.run_id, result=skip.result, message=skip.reason
        )
    config = session.config
    option = config.option
    updates = {**session.updates, **item.params}
    capture = option.capture or config.settings.capture
    beat = config.settings.beat_interval
    options = {
        "--capture": capture,
        "--comment": option.comment,
        "--unobserved": bool(option.unobserved),
        "--force": bool(option.force),
        "--beat-interval": beat,
    }
    start = time.perf_counter()
    try:
        run = create_run(
            item.experiment,
            item.experiment.default_command,
            config_updates=updates or None,
            named_configs=list(option.named),
            options=options,
            observers=session.stores,
            meta_info={**({"sweep": item.sweep.as_meta()} if item.sweep else {}), **(meta or {})},
        )
    except ExpkitError as exc:
        return RunReport(item.nodeid, "ERROR", time.perf_counter() - start, message=str(exc))
    except Exception as exc:
        # The experiment's own code (a config scope, a hook) failed before the run started.
        trace = format_user_traceback(exc)
        return RunReport(
            item.nodeid,
            "FAILED",
            time.perf_counter() - start,
            message=trace[-1].strip(),
            longrepr="".join(trace),
        )
    try:
        run()
    except KeyboardInterrupt:
        session.shouldstop = session.interrupted = True
    except BaseException as exc:
        if run.status is None:
            # Refused before it started (a seed that is no integer, ...): say why.
            status = "ERROR" if isinstance(exc, ExpkitError) else FAILED
            return RunReport(item.nodeid, status, time.perf_counter() - start, message=str(exc))
    if run.status == INTERRUPTED:
        # However the interrupt reached the run (Ctrl-C, SIGTERM, ExpkitInterrupt), nothing
        # more is started: as the -n driver does for a worker's interrupted item.
        session.shouldstop = session.interrupted = True
    duration = time.perf_counter() - start
    message = None
    if run.status == FAILED and run.fail_trace:
        message = run.fail_trace[-1].strip()
    return RunReport(
        item.nodeid,
        run.status or FAILED,
        duration,
        run_id=run._id,
        result=run.result,
        message=message,
        longrepr="".join(run.fail_trace) if run.fail_trace else None,
        stored=tuple(run.stored),
        metrics=run.latest_metrics(),
    )


def fails_session(report: RunReport) -> bool:
    """Whether ``report`` counts as a failure (for ``-x`` and the exit code): not a skipped
    run, nor a trial its study pruned (stopped early on purpose)."""
    return not report.ok and report.status not in (SKIPPED, "PRUNED")


@hookimpl(trylast=True)
def expkit_runtestloop(session: Session) -> bool:
    hook = session.config.pluginmanager.hook
    for item in session.items:
        if item.skip is None:
            hook.expkit_run_logstart(nodeid=item.nodeid)
        report = run_item(session, item)
        session.reports.append(report)
        hook.expkit_run_logreport(report=report)
        if session.shouldstop or (session.config.option.exitfirst and fails_session(report)):
            session.shouldstop = True
            break
    return True


def exit_code(session: Session) -> ExitCode:
    """The exit code that sums up the session."""
    if session.interrupted:
        return ExitCode.INTERRUPTED
    if any(r.status == "ERROR" for r in session.reports):
        return ExitCode.USAGE_ERROR
    if any(fails_session(r) for r in session.reports):
        return ExitCode.RUNS_FAILED
    if any(r.not_stored for r in session.reports):
        return ExitCode.RUNS_FAILED  # a run no store has is a run lost to its user
    return ExitCode.OK


def configure_logging(verbose: int) -> None:
    # Runs log "Started run ..." at INFO; the reporter says that, so the terminal shows it
    # only with -v. The runs' captured output holds INFO lines either way.
    root = logging.getLogger()
    shown = logging.INFO if verbose > 0 else logging.WARNING
    if root.handlers:
        root.setLevel(shown)  # logging set up by someone else: leave its handlers be
        return
    root.addHandler(ConsoleLogHandler(shown_level=shown))
    root.setLevel(logging.INFO)


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "run":
        return None
    session = Session(config)
    config.session = session
    configure_logging(getattr(config.option, "verbose", 0))
    hook = config.pluginmanager.hook
    session.updates = run_updates(config)  # parsed first: a malformed -o stops before collection
    collect(session, open_stores=not config.option.collect_only)
    if config.option.collect_only:
        code = _collect_only_code(session)
        hook.expkit_sessionfinish(session=session, exitstatus=code)
        return code
    if session.errors:
        code = ExitCode.INTERRUPTED
    elif not session.items:
        code = ExitCode.NO_EXPERIMENTS_COLLECTED
        if session.deselected:
            sys.stderr.write(
                f"ERROR: -k {config.option.keyword!r} selects none of the "
                f"{len(session.deselected)} collected experiments\n"
            )
    else:
        hook.expkit_runtestloop(session=session)
        code = exit_code(session)
    hook.expkit_sessionfinish(session=session, exitstatus=code)
    return code


def _collect_only_code(session: Session) -> ExitCode:
    if session.errors:
        return ExitCode.INTERRUPTED
    if not session.items:
        return ExitCode.NO_EXPERIMENTS_COLLECTED
    return ExitCode.OK
