"""The terminal reporter: header, one line per run, failures, and a closing summary line.

Registered as ``"terminalreporter"`` so other plugins can fetch or replace it, as in pytest.
Colour only when the output is a terminal.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from colorama import Fore, Style

import expkit
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.serialize import to_data
from expkit.utils import printable, redact_url, rounded
from expkit_plugins.session import fails_session, store_urls

_STATUS_COLOUR = {
    "COMPLETED": Fore.GREEN,
    "FAILED": Fore.RED,
    "ERROR": Fore.RED,
    "INTERRUPTED": Fore.YELLOW,
}
# pytest's order ("1 failed, 3 passed, 1 skipped, 2 deselected, 1 error"); others after.
_ORDER = ["failed", "completed", "not stored", "skipped", "interrupted", "deselected", "error"]


class TerminalReporter:
    """Writes what happens in a session to the terminal."""

    def __init__(self, config: Any, file: TextIO | None = None) -> None:
        self.config = config
        self.file = file or sys.stdout
        self.colour = self.file.isatty() and os.environ.get("NO_COLOR") is None
        self.verbosity = getattr(config.option, "verbose", 0) - getattr(config.option, "quiet", 0)
        self.start = time.perf_counter()
        self.done = 0

    # --- hooks: the reporter is the plugin "terminalreporter", as pytest's is ---

    @hookimpl
    def expkit_collection_finish(self, session: Any) -> None:
        """The header and what was collected (or, with --collect-only, the whole list)."""
        if session.config.command != "run":
            return
        if self.verbosity >= 0:
            self.header(session)
            self.collected(session)
        if session.config.option.collect_only:
            self.collect_only(session)

    @hookimpl
    def expkit_run_logreport(self, report: Any) -> None:
        """A line for each finished run."""
        self.run_line(report, len(self.config.session.items))

    @hookimpl
    def expkit_sessionfinish(self, session: Any, exitstatus: int) -> None:
        """The summary: what failed, where the runs went, the closing line."""
        self.summary(session, exitstatus)

    def write_line(self, text: str = "", colour: str | None = None) -> None:
        """Write one line, coloured when the output is a terminal."""
        if colour and self.colour:
            text = f"{colour}{text}{Style.RESET_ALL}"
        self.file.write(text + "\n")
        self.file.flush()

    def sep(self, char: str, title: str = "", colour: str | None = None) -> None:
        """A full-width separator line with an optional title, as pytest draws them."""
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        title = printable(title)
        if title:
            side = max((width - len(title) - 2) // 2, 3)
            line = f"{char * side} {title} {char * side}"
        else:
            line = char * width
        self.write_line(line, colour)

    def header(self, session: Any) -> None:
        """Version, root folder, stores and plugins."""
        config = self.config
        self.sep("=", "expkit session starts", Style.BRIGHT)
        self.write_line(f"expkit {expkit.__version__}, Python {platform.python_version()}")
        rootline = f"rootdir: {config.rootdir}"
        if config.inifile:
            rootline += f", configfile: {config.inifile.name}"
        self.write_line(rootline)
        for lines in config.pluginmanager.hook.expkit_report_header(config=config):
            for line in [lines] if isinstance(lines, str) else lines or ():
                self.write_line(line)

    def collected(self, session: Any) -> None:
        """The count of what was collected and deselected."""
        n = len(session.items) + len(session.deselected)
        line = f"collected {n} experiment{'s' if n != 1 else ''}"
        if session.deselected:
            line += f" / {len(session.deselected)} deselected"
        if session.errors:
            line += f" / {len(session.errors)} error{'s' if len(session.errors) != 1 else ''}"
        self.write_line(line)

    def collect_only(self, session: Any) -> None:
        """The tree of what would run, or node ids with -q."""
        if self.verbosity < 0:
            for item in session.items:
                self.write_line(printable(item.nodeid))
        else:
            current = None
            for item in session.items:
                module = item.nodeid.split("::")[0]
                if module != current:
                    self.write_line(f"<Module {printable(module)}>")
                    current = module
                self.write_line(f"  <Experiment {printable(item.name)}>")
                for line in _config_lines(item):
                    self.write_line(f"    {line}")

    def run_line(self, report: Any, total: int) -> None:
        """One line per finished run: progress, node id, status, id, duration, result."""
        self.done += 1
        progress = f"[{self.done:>{len(str(total))}}/{total}] " if total > 1 else ""
        parts = [f"{progress}{printable(report.nodeid)}", report.status]
        if report.run_id is not None:
            parts.append(f"id={printable(report.run_id)}")
        parts.append(f"{report.duration:.2f}s")
        if report.ok and report.result is not None:
            parts.append(f"result={_short(to_data(report.result))}")  # 0.97, not np.float64
        elif report.message:
            parts.append(report.message)
        self.write_line("  ".join(parts), _STATUS_COLOUR.get(report.status, Fore.YELLOW))

    def summary(self, session: Any, exitstatus: int) -> None:
        """Collection errors, failures and the closing line."""
        if session.errors:
            self.sep("=", "ERRORS", Fore.RED)
            for error in session.errors:
                self.sep("_", f"ERROR collecting {error.nodeid}", Fore.RED)
                self.write_line(error.message.rstrip())
        failed = [r for r in session.reports if not r.ok and r.longrepr]
        if failed:
            self.sep("=", "FAILURES", Fore.RED)
            for report in failed:
                self.sep("_", report.nodeid, Fore.RED)
                self.write_line(report.longrepr.rstrip())
        for line in store_lines(session.reports, session.store_urls):
            self.write_line(line)
        self.config.pluginmanager.hook.expkit_terminal_summary(
            terminalreporter=self, exitstatus=exitstatus
        )
        not_run = len(session.items) - len(session.reports)
        if not_run > 0 and session.reports and not self.config.option.collect_only:
            self.sep("!", _stopped(session, not_run), Fore.RED)
        counts: dict[str, int] = {}
        for report in session.reports:
            key = "completed" if report.ok else report.status.lower()
            counts[key] = counts.get(key, 0) + 1
            if report.not_stored:
                counts["not stored"] = counts.get("not stored", 0) + 1
        if session.deselected:
            counts["deselected"] = len(session.deselected)
        if session.errors:
            counts["error"] = counts.get("error", 0) + len(session.errors)
        if self.config.option.collect_only:
            n = len(session.items)
            text = f"{n} experiment{'s' if n != 1 else ''} collected"
        else:
            keys = sorted(counts, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER))
            text = ", ".join(_count(counts[k], k) for k in keys) or "no experiments ran"
        seconds = time.perf_counter() - self.start
        colour = Fore.GREEN if exitstatus == ExitCode.OK else Fore.RED
        if self.verbosity < 0:
            self.write_line(f"{text} in {seconds:.2f}s", colour)
        else:
            self.sep("=", f"{text} in {seconds:.2f}s", colour)


def _stopped(session: Any, not_run: int) -> str:
    """Why the session ended early, and how many experiments it did not run."""
    what = f"{not_run} experiment{'s' if not_run != 1 else ''} not run"
    failed = sum(1 for r in session.reports if fails_session(r))
    if session.config.option.exitfirst and failed and not session.interrupted:
        return f"stopping after {failed} failure{'s' if failed != 1 else ''} (-x): {what}"
    return f"interrupted: {what}"


def store_lines(reports: Sequence[Any], urls: Sequence[str] = ()) -> list[str]:
    """Where the runs went, per store (``urls`` first, in order): stored (with their ids),
    spooled (with the command that delivers them), undeliverable (why, and where they are
    kept) or lost."""
    by_store: dict[str, dict[str, list]] = {redact_url(url): {} for url in urls}
    for report in reports:
        for outcome in report.stored:
            by_store.setdefault(outcome.store, {}).setdefault(outcome.state, []).append(outcome)
    lines = []
    for store, states in by_store.items():
        where = printable(store)
        if "stored" in states:
            ids = ", ".join(printable(o.run_id) for o in states["stored"])
            lines.append(f"stored {len(states['stored'])} run(s) in {where}: id {ids}")
        if "spooled" in states:
            command = f"expkit sync {shlex.quote(states['spooled'][0].folder)} {shlex.quote(store)}"
            note = " (the password in place of ***)" if "***" in store else ""
            lines.append(
                f"spooled {len(states['spooled'])} run(s) for {where} (not stored yet); "
                f"deliver with: {printable(command)}{note}"
            )
        for outcome in states.get("undeliverable", ()):
            reason = printable(outcome.reason)
            lines.append(f"not stored in {where}: {reason}; kept in {printable(outcome.folder)}")
        for outcome in states.get("lost", ()):
            lines.append(f"not stored in {where}, and lost: {printable(outcome.reason)}")
    return lines


def _count(n: int, word: str) -> str:
    # pytest's words: "1 error", "2 errors"; the other categories do not change.
    return f"{n} {word}s" if word == "error" and n != 1 else f"{n} {word}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(rounded(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_lines(item: Any) -> list[str]:
    from expkit.configuration import flatten
    from expkit.resolve import resolve_config

    try:
        config = resolve_config(item.experiment, item.params or None)
    except Exception as exc:
        return [f"(config cannot be built: {exc})"]
    return [
        f"{path} = {value!r}" for path, value in flatten(config) if path not in ("seed", "__doc__")
    ]


@hookimpl
def expkit_addoption(parser: Any) -> None:
    group = parser.getgroup("reporting")
    group.addoption("-v", "--verbose", action="count", default=0, help="say more")
    group.addoption("-q", "--quiet", action="count", default=0, help="say less")


@hookimpl
def expkit_configure(config: Any) -> None:
    if config.command in ("run", "config", "tune"):
        reporter = TerminalReporter(config)
        config.pluginmanager.register(reporter, "terminalreporter")


@hookimpl
def expkit_report_header(config: Any) -> list[str]:
    lines = []
    session = getattr(config, "session", None)
    if config.option.unobserved:
        lines.append("store: none (-u)")
    elif session is not None:
        lines.append(f"store: {', '.join(map(redact_url, store_urls(config)))}")
    third_party = [
        f"{info.name}-{info.version}" if info.version else info.name
        for info in config.pluginmanager.infos.values()
        if info.origin in ("entrypoint", "-p", "env")
    ]
    if third_party:
        lines.append("plugins: " + ", ".join(third_party))
    return lines
