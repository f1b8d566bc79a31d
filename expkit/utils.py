"""Small helpers shared by the core and the plugins: output filters, redaction, suggestions."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

# Sacred's errors live in sacred.utils: migrated imports find them here.
from expkit.errors import (
    CircularDependencyError,
    ConfigAddedError,
    ConfigError,
    InvalidConfigError,
    MissingConfigError,
    NamedConfigNotFoundError,
    ObserverError,
    SacredError,
    SacredInterrupt,
    SignatureError,
    TimeoutInterrupt,
)

__all__ = [
    "CapturedOutput",
    "CircularDependencyError",
    "ConfigAddedError",
    "ConfigError",
    "InvalidConfigError",
    "MissingConfigError",
    "NamedConfigNotFoundError",
    "ObserverError",
    "SacredError",
    "SacredInterrupt",
    "SignatureError",
    "TimeoutInterrupt",
    "apply_backspaces_and_linefeeds",
    "file_md5",
    "has_control_chars",
    "parse_literal",
    "printable",
    "redact_argv",
    "redact_url",
    "replace_file",
    "split_userinfo",
    "suggest",
    "temp_file_beside",
]

_CONTROL = re.compile(r"([\r\b])")


def _render_line(line: str) -> str:
    """Draw one line (no ``\\n`` in it) the way a terminal shows it."""
    if "\r" not in line and "\b" not in line:
        return line
    cells: list[str] = []
    cursor = 0
    for part in _CONTROL.split(line):
        if part == "\r":
            cursor = 0
        elif part == "\b":
            cursor = max(cursor - 1, 0)
        elif part:
            # Later characters overwrite the cells under the cursor, extending the line if needed.
            cells[cursor : cursor + len(part)] = part
            cursor += len(part)
    return "".join(cells)


def apply_backspaces_and_linefeeds(text: str) -> str:
    """Interpret ``\\r`` and ``\\b`` in ``text`` as a terminal would; ``\\n`` ends a line."""
    if "\r" not in text and "\b" not in text:
        return text
    return "\n".join(_render_line(line) for line in text.split("\n"))


# Each line is drawn on its own, and a line's text before a '\r' may be replaced by its drawing,
# which is what CapturedOutput needs to filter output piece by piece (see CapturedOutput).
apply_backspaces_and_linefeeds.incremental = True  # type: ignore[attr-defined]


class CapturedOutput:
    """The captured output of a run: raw chunks in, the filtered text out, kept current cheaply.

    ``filter`` is ``None`` (the text is the raw text) or a function ``str -> str``.

    A filter marked ``incremental = True`` promises to treat ``\\n`` and ``\\r`` as a terminal
    does: ``f(a + b) == f(a) + f(b)`` when ``a`` ends with ``\\n``, and
    ``f(a + b) == f(f(a) + b)`` when ``b`` starts with ``\\r`` and ``a`` holds no ``\\n``.
    The complete lines are then filtered once and kept; only the unfinished last line is
    filtered again, and a progress bar's overdrawn states are dropped as they come, so the
    total work stays linear in the output's size.

    Any other filter is applied to the whole raw text each time the text changes, as Sacred
    does; it may rewrite earlier output, but it costs the whole text at every read, and the
    stable text stops growing while the filtered text disagrees with it.
    """

    # Between reads, the unfinished line is compacted once it has doubled and grown past this.
    _COMPACT_MIN = 1 << 16

    def __init__(self, filter: Callable[[str], str] | None = None) -> None:
        self._filter = filter
        self._incremental = bool(getattr(filter, "incremental", False))
        self._lock = threading.Lock()
        self._chunks: list[str] = []  # raw text: all of it, or the unfinished line (incremental)
        self._pending_len = 0
        self._compacted_len = 0
        self._committed: list[str] = []  # incremental: the filtered complete lines
        self._text: str | None = ""
        self._stable = ""

    def append(self, raw: str) -> None:
        """Add a chunk of raw output."""
        if not raw:
            return
        with self._lock:
            self._text = None
            if not self._incremental:
                self._chunks.append(raw)
                return
            end = raw.rfind("\n") + 1
            if end:
                line_ends = "".join(self._chunks) + raw[:end]
                self._committed.append(self._filter(line_ends))  # type: ignore[misc]
                self._chunks = [raw[end:]] if end < len(raw) else []
                self._pending_len = self._compacted_len = len(raw) - end
            else:
                self._chunks.append(raw)
                self._pending_len += len(raw)
                if self._pending_len > max(2 * self._compacted_len, self._COMPACT_MIN):
                    self._compact()

    def _compact(self) -> None:
        """Replace the unfinished line's text before its last ``\\r`` by its filtered form."""
        pending = "".join(self._chunks)
        cut = pending.rfind("\r")
        if cut > 0:
            pending = self._filter(pending[:cut]) + pending[cut:]  # type: ignore[misc]
        self._chunks = [pending] if pending else []
        self._pending_len = self._compacted_len = len(pending)

    def _refresh(self) -> str:
        """Compute the text and the stable text after appends; called with the lock held."""
        if self._text is not None:
            return self._text
        if self._filter is None:
            raw = "".join(self._chunks)
            self._chunks = [raw]
            self._text = raw
            self._stable = raw[: raw.rfind("\n") + 1]
        elif self._incremental:
            self._compact()
            if len(self._committed) > 1:
                self._committed = ["".join(self._committed)]
            self._stable = self._committed[0] if self._committed else ""
            self._text = self._stable + self._filter("".join(self._chunks))
        else:
            raw = "".join(self._chunks)
            self._chunks = [raw] if raw else []
            text = self._filter(raw)
            # The filter may rewrite what came before: the stable text only grows while the
            # filtered texts keep agreeing on it.
            if text.startswith(self._stable):
                self._stable = text[: text.rfind("\n") + 1]
            self._text = text
        return self._text

    @property
    def filter(self) -> Callable[[str], str] | None:
        """The filter given when this output was created."""
        return self._filter

    @property
    def text(self) -> str:
        """The complete filtered text."""
        with self._lock:
            return self._refresh()

    @property
    def stable_text(self) -> str:
        """The filtered complete lines; later output only ever appends to it."""
        with self._lock:
            self._refresh()
            return self._stable


# A URL in free text: scheme, "://", and the rest of the word (a password may hold "/?#@").
# A password may hold spaces too: after "user:" (not "host:PORT/"), the URL then runs to the
# last "@" before a host on the same line, short of the next URL (and of 256 characters: a
# long line of "host:port" URLs stays linear). Only a URL given alone may have a space in its
# user name: in text, "scheme://host failed: ..." would look like one.
# "host:27017 failed ... admin@example.com" holds a port, not a password (one of digits
# and a space is taken for a port too).
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
_SPACED = r":(?!\d+(?:[/?#\s]|$))(?:(?!://)[^\n]){0,256}@(?=[\w\[%])\S*"
_URL_IN_TEXT = re.compile(
    rf"(?<![A-Za-z0-9+.-])(?P<head>{_SCHEME})(?P<rest>[^\s:/?#@]*{_SPACED}|\S*)"
)
_URL_ALONE = re.compile(rf"{_SCHEME}[^\n:/?#@]*{_SPACED}")


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``scheme://user:password@host/...`` as ``("scheme://", "user:password", "host/...")``.

    The user info is ``None`` when the URL has none. A password may hold unencoded
    ``@ / ? #`` (users type them; a store's error message repeats them), so the user info
    runs to the last ``@`` before the query, or to an ``@`` after a ``?`` that no option
    (``k=v``) precedes: a path with an ``@`` after ``host:port`` may be taken for user info,
    which hides more than the password, never less.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    q = rest.find("?")
    at = rest.rfind("@", 0, q) if q >= 0 else rest.rfind("@")
    if at < 0 and q >= 0:
        at = rest.rfind("@")
        if "=" in rest[q:at]:
            at = -1
    if at < 0:
        return head + sep, None, rest
    return head + sep, rest[:at], rest[at + 1 :]


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:password@host``)
    and the values of secret query options shown as ``***``.

    A query option is secret when its name says so (``...pass...``, ``secret``, ``token``,
    also as keys inside ``K:V,...`` values). This is the one redaction of expkit: every URL
    that is printed, logged or stored goes through it.
    """
    if "://" not in text:
        return text
    alone = _URL_ALONE.fullmatch(text)
    if alone:
        return _redact_match(alone)
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    head, userinfo, rest = split_userinfo(match.group())
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else user) + "@" + rest
    base, q, query = rest.partition("?")
    if q:
        query = "&".join(_redact_option(option) for option in query.split("&"))
    return head + base + q + query


_SECRET_OPTION = r"(?i)pass|secret|token"  # compiled and cached by re on first use


def _redact_option(option: str) -> str:
    key, eq, value = option.partition("=")
    if eq and re.search(_SECRET_OPTION, key):
        return f"{key}=***"
    if eq and ":" in value:  # authMechanismProperties=AWS_SESSION_TOKEN:...
        pairs = [p.partition(":") for p in value.split(",")]
        value = ",".join(
            f"{k}{c}***" if c and re.search(_SECRET_OPTION, k) else k + c + v for k, c, v in pairs
        )
    return f"{key}{eq}{value}"


def redact_argv(argv: list[str]) -> list[str]:
    """Return ``argv`` with the password of every URL in it (also in ``key=value``) redacted."""
    return [redact_url(arg) for arg in argv]


# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder what a
# terminal shows ("Trojan source"): never written raw where a name or an id is printed.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both absolute, resolved alike)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies in ``folder`` once both have their symlinks resolved: a file a
    stored record names may be read from its store only if it is in the store."""
    return is_under(os.path.realpath(path), os.path.realpath(folder))


def has_control_chars(text: str) -> bool:
    """Whether ``text`` holds a control character (an escape sequence, a newline, ...)."""
    # isprintable (in C) is False for every character the pattern matches: most text is
    # cleared without the regex.
    return not text.isprintable() and _CONTROL_CHARS.search(text) is not None


def printable(value: Any) -> str:
    """``str(value)`` with control characters escaped (``\\x1b``, ``\\n``), safe to print."""
    text = str(value)
    if not has_control_chars(text):
        return text
    return _CONTROL_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_md5_cache: dict[tuple[str, int, int], str] = {}


def rounded(value: Any) -> Any:
    """Floats (also inside dicts and lists) to 6 significant digits, for reading."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file's content, read in 1 MiB blocks; cached while it stays unchanged."""
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    digest = _md5_cache.get(key)
    if digest is None:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                md5.update(block)
        digest = _md5_cache[key] = md5.hexdigest()
    return digest


def temp_file_beside(path: str) -> tuple[int, str]:
    """A new, empty, open file ``.NAME.RANDOM.tmp`` beside ``path``: (descriptor, path)."""
    # Not tempfile.mkstemp: its 0600 mode would hide run files from other users.
    folder, name = os.path.split(path)
    while True:
        temp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue


def replace_file(path: str, fill: Callable[[Any], Any]) -> None:
    """Write a temp file beside ``path`` with ``fill(binary file)`` and move it over ``path``.

    Readers see the old file or the new one, never a part; an existing file keeps its mode.
    """
    fd, temp = temp_file_beside(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temp, os.stat(path).st_mode & 0o7777)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` naming up to three near misses of ``name``, else ``""``."""
    import difflib  # only when a name is wrong: not on every start-up

    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    quoted = [f"'{match}'" for match in matches]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {listed}?)"


def parse_literal(text: str) -> object:
    """Return the Python literal ``text`` denotes, or ``text`` itself when it is no literal.

    Text that opens a list, dict, tuple or string but does not close it is a mistake,
    not a string: it raises :class:`ValueError` saying so. So does a number no store can
    keep as written: a float beyond the largest (``1e400`` would be ``inf``, which standard
    JSON has no word for) and an int longer than Python reads from text (4300 digits).
    """
    if not text.strip():
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        if text.lstrip()[:1] in ("[", "{", "(", "'", '"'):
            reason = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
            raise ValueError(f"{text!r} is not a valid Python literal ({reason})") from None
        limit = sys.get_int_max_str_digits()
        digits = sum(c.isdigit() for c in text) if _DECIMAL_INT.fullmatch(text.strip()) else 0
        if limit and digits > limit:
            raise ValueError(
                f"an int of {digits} digits is longer than Python reads from text ({limit}); "
                "compute it in the config instead (e.g. n = 10**5000)"
            ) from None
        return text
    bad = _non_finite(value)
    if bad is not None:
        raise ValueError(
            f"{text.strip()!r} holds a number beyond the largest float (it would be {bad}, "
            "which JSON cannot store); give a number below 1.8e308"
        )
    return value


_DECIMAL_INT = re.compile(r"[+-]?[1-9][0-9_]*")


def _non_finite(value: object) -> float | None:
    """The first infinite or NaN float in ``value`` (a literal's containers included)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            found = _non_finite(item)
            if found is not None:
                return found
    return None
