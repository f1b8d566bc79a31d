"""The output filter, captured-output accumulator, redaction, suggestions and literal parsing."""

from __future__ import annotations

import itertools
import os
import socket
import tracemalloc
from pathlib import Path

import pytest
from cli_helpers import run_expkit, write_project
from hypothesis import given
from hypothesis import strategies as st

from expkit.utils import (
    CapturedOutput,
    apply_backspaces_and_linefeeds,
    has_control_chars,
    parse_literal,
    printable,
    redact_argv,
    redact_url,
    replace_file,
    suggest,
)

# --- apply_backspaces_and_linefeeds ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text\nno controls\n", "plain text\nno controls\n"),
        ("  0%|          |\r 50%|#####     |\r100%|##########|\n", "100%|##########|\n"),
        ("abcdef\rXY", "XYcdef"),
        ("abc\b\bX", "aXc"),
        ("ab\b\b\b\bX", "Xb"),
        ("ab\n\bX", "ab\nX"),
        ("line 1\r\nline 2\r\n", "line 1\nline 2\n"),
        ("epoch 1\r\repoch 2\n\n", "epoch 2\n\n"),
        ("done\r", "done"),
        ("\b\r\b", ""),
        ("", ""),
    ],
)
def test_interprets_carriage_returns_and_backspaces_like_a_terminal(raw, shown):
    assert apply_backspaces_and_linefeeds(raw) == shown


def test_is_marked_incremental():
    assert apply_backspaces_and_linefeeds.incremental is True


# --- CapturedOutput ----------------------------------------------------------------

_OUTPUT = st.text(alphabet="ab\r\b\n\u00e9", max_size=80)


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _is_prefix(a: str, b: str) -> bool:
    return b.startswith(a)


class _EagerOutput(CapturedOutput):
    """Compacts the unfinished line at every append, not only after it grew large."""

    _COMPACT_MIN = 0


@pytest.mark.parametrize("output_class", [CapturedOutput, _EagerOutput])
@given(raw=_OUTPUT, cuts=st.lists(st.integers(min_value=0), max_size=12), data=st.data())
def test_incremental_filtering_equals_filtering_the_whole_text(output_class, raw, cuts, data):
    output = output_class(apply_backspaces_and_linefeeds)
    seen = ""
    stable = ""
    for chunk in _chunked(raw, cuts):
        output.append(chunk)
        seen += chunk
        if data.draw(st.booleans(), label="read now"):
            assert output.text == apply_backspaces_and_linefeeds(seen)
            assert _is_prefix(stable, output.stable_text)
            stable = output.stable_text
            assert _is_prefix(stable, output.text)
    assert output.text == apply_backspaces_and_linefeeds(raw)
    assert output.stable_text == apply_backspaces_and_linefeeds(raw[: raw.rfind("\n") + 1])


@given(raw=_OUTPUT, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_without_a_filter_the_text_is_the_raw_text(raw, cuts):
    output = CapturedOutput()
    stable = ""
    for chunk in _chunked(raw, cuts):
        output.append(chunk)
        assert _is_prefix(stable, output.stable_text)
        stable = output.stable_text
    assert output.text == raw
    assert output.stable_text == raw[: raw.rfind("\n") + 1]
    assert output.filter is None


def test_stable_text_holds_complete_lines_only():
    output = CapturedOutput(apply_backspaces_and_linefeeds)
    output.append("epoch 1: 10%\repoch 1: 100%\nepoch 2: 5")
    assert output.stable_text == "epoch 1: 100%\n"
    assert output.text == "epoch 1: 100%\nepoch 2: 5"
    output.append("0%\rep")
    assert output.stable_text == "epoch 1: 100%\n"
    assert output.text == "epoch 1: 100%\nepoch 2: 50%"
    output.append("och 2: 100%\n")
    assert output.stable_text == output.text == "epoch 1: 100%\nepoch 2: 100%\n"


def _counting(filter_function, incremental: bool):
    def counted(text: str) -> str:
        counted.chars += len(text)
        return filter_function(text)

    counted.chars = 0
    counted.incremental = incremental
    return counted


def _progress_bar(steps: int):
    for i in range(steps):
        yield f"\r{i * 100 // steps:3d}%|{'#' * (i * 40 // steps):<40}| {i}/{steps}"


def test_a_long_progress_bar_is_filtered_in_linear_work():
    counted = _counting(apply_backspaces_and_linefeeds, incremental=True)
    output = CapturedOutput(counted)
    raw_size = 0
    for i, chunk in enumerate(_progress_bar(100_000)):
        output.append(chunk)
        raw_size += len(chunk)
        if i % 100 == 0:  # a heartbeat
            text = output.text
            assert text.endswith(f"| {i}/100000")
            assert "\r" not in text
    output.append("\n")
    assert output.text == " 99%|" + "#" * 39 + " | 99999/100000\n"
    # Filtering everything again at each of the 1,000 reads would be ~500 times the output.
    assert counted.chars < 3 * raw_size


def test_unread_output_is_compacted_as_it_comes():
    output = CapturedOutput(apply_backspaces_and_linefeeds)
    raw_size = 0
    tracemalloc.start()
    try:
        for chunk in _progress_bar(100_000):
            output.append(chunk)
            raw_size += len(chunk)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Without a read, the overdrawn states of the bar are still dropped as they come.
    assert held < raw_size / 10
    assert output.text == " 99%|" + "#" * 39 + " | 99999/100000"


def test_many_lines_are_filtered_once_each():
    counted = _counting(apply_backspaces_and_linefeeds, incremental=True)
    output = CapturedOutput(counted)
    raw_size = 0
    for i in range(20_000):
        line = f"step {i}: 50%\rstep {i}: 100%\n"
        output.append(line)
        raw_size += len(line)
        if i % 50 == 0:
            assert output.stable_text.endswith(f"step {i}: 100%\n")
    assert counted.chars == raw_size
    assert len(output.text.splitlines()) == 20_000


def test_other_filters_see_the_whole_text_as_in_sacred():
    counted = _counting(lambda text: text.upper()[-12:], incremental=False)
    output = CapturedOutput(counted)
    output.append("first line\n")
    assert output.text == "FIRST LINE\n"
    output.append("second line\nthird")
    assert output.text == "D LINE\nTHIRD"
    assert counted.chars == len("first line\n") + len("first line\nsecond line\nthird")
    assert output.text == "D LINE\nTHIRD"  # cached: not filtered again
    assert counted.chars == len("first line\n") + len("first line\nsecond line\nthird")


def test_stable_text_of_a_rewriting_filter_only_grows():
    output = CapturedOutput(lambda text: text[-12:])
    output.append("first line\n")
    assert output.stable_text == "first line\n"
    output.append("second line\n")
    # The filter dropped the first line: the stable text keeps what was already stable.
    assert output.text == "second line\n"
    assert output.stable_text == "first line\n"


def test_a_filter_that_replaces_everything():
    output = CapturedOutput(lambda text: "Output capturing turned off.")
    output.append("secret\n")
    assert output.text == "Output capturing turned off."
    assert output.stable_text == ""


def test_empty_chunks_change_nothing():
    output = CapturedOutput(apply_backspaces_and_linefeeds)
    output.append("")
    assert output.text == output.stable_text == ""


# --- redaction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("mongodb://user:secret@host:27017/db", "mongodb://user:***@host:27017/db"),
        ("mongodb+srv://me:p%40ss@cluster.example/db", "mongodb+srv://me:***@cluster.example/db"),
        ("mongodb://u:p@ss@h1,h2/db?authSource=x", "mongodb://u:***@h1,h2/db?authSource=x"),
        ("redis://:token@host", "redis://:***@host"),
        ("mongodb://user@host/db", "mongodb://user@host/db"),
        ("mongodb://host:27017/db", "mongodb://host:27017/db"),
        ("mongodb://u:pa/ss@h/db", "mongodb://u:***@h/db"),
        ("mongodb+srv://u:p@ss/w@cluster.example.net/", "mongodb+srv://u:***@cluster.example.net/"),
        ("mongodb://u:pa?ss@h/db", "mongodb://u:***@h/db"),
        ("mongodb://h:27017/db?appname=me@host", "mongodb://h:27017/db?appname=me@host"),
        # An "@" in a path after host:port may be a password's: hiding more, never less.
        ("http://host:8080/path@v2", "http://host:***@v2"),
        ("http://host/path@v2", "http://host/path@v2"),
        (
            "mongodb://h/db?tlsCertificateKeyFilePassword=s3&w=1",
            "mongodb://h/db?tlsCertificateKeyFilePassword=***&w=1",
        ),
        (
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:abc,SERVICE_NAME:x",
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:x",
        ),
        ("https://h/x?token=t&page=2", "https://h/x?token=***&page=2"),
        ("data/x.csv?token=t", "data/x.csv?token=t"),
        ("data/x.csv", "data/x.csv"),
        ("user:pass@host", "user:pass@host"),
        ("localhost:27017", "localhost:27017"),
        ("", ""),
        # URLs inside text: error messages, command lines, captured output.
        (
            "cannot reach mongodb://a:PW@h/db (refused); try 'mongodb+srv://b:PW2@c/d'",
            "cannot reach mongodb://a:***@h/db (refused); try 'mongodb+srv://b:***@c/d'",
        ),
        (
            "stored in runs, mongodb://alice:PW@host/db: id 1",
            "stored in runs, mongodb://alice:***@host/db: id 1",
        ),
        ("--store=mongodb://u:p@h", "--store=mongodb://u:***@h"),
    ],
)
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        # Given alone, everything between "://" and the last "@" before the host is user info.
        ("mongodb://u:pa ss@127.0.0.1:1/db", "mongodb://u:***@127.0.0.1:1/db"),
        ("mongodb://my user:two words@h/db", "mongodb://my user:***@h/db"),
        ("mongodb://u:p@ss w@rd@h/db?appname=me@host", "mongodb://u:***@h/db?appname=me@host"),
        ("mongodb://u:pa ss@%2Ftmp%2Fm.sock", "mongodb://u:***@%2Ftmp%2Fm.sock"),
        # Inside text: up to the last "@" before a host, short of the line's next URL.
        (
            "store mongodb://u:pa ss@h:1/db failed (at mongodb://u:pa ss@h:1/db: refused)",
            "store mongodb://u:***@h:1/db failed (at mongodb://u:***@h:1/db: refused)",
        ),
        (
            "replay it with 'expkit sync /s mongodb://u:pa ss@h/db' or by the next run",
            "replay it with 'expkit sync /s mongodb://u:***@h/db' or by the next run",
        ),
        ("one mongodb://u:a b@h\ntwo x@y", "one mongodb://u:***@h\ntwo x@y"),
        # A port, a quoted "@" or no "@" at all is no password with spaces.
        (
            "mysql://h:3306/db failed: denied for 'u'@'localhost', ask admin@example.com",
            "mysql://h:3306/db failed: denied for 'u'@'localhost', ask admin@example.com",
        ),
        ("cannot reach mongodb://h:1/db: timed out", "cannot reach mongodb://h:1/db: timed out"),
        (
            "store mongodb://db:27017 failed: timed out; ask admin@example.com",
            "store mongodb://db:27017 failed: timed out; ask admin@example.com",
        ),
        (
            "http://host:8080 is down, mail bob@corp.com",
            "http://host:8080 is down, mail bob@corp.com",
        ),
    ],
)
def test_redact_url_hides_a_password_with_spaces(text, redacted):
    assert redact_url(text) == redacted


def test_redact_argv_redacts_values_of_key_value_pairs_too():
    argv = [
        "exp.py",
        "-m",
        "mongodb://u:pw@host/db",
        "--mongo_db=mongodb://u:pw@host/db",
        "with",
        "url=mongodb://u:pw@host",
        "C=3",
    ]
    assert redact_argv(argv) == [
        "exp.py",
        "-m",
        "mongodb://u:***@host/db",
        "--mongo_db=mongodb://u:***@host/db",
        "with",
        "url=mongodb://u:***@host",
        "C=3",
    ]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name", "plain name"),
        ("\x1b[2Jwiped", "\\x1b[2Jwiped"),
        ("a\nb\tc\r", "a\\nb\\tc\\r"),
        ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("épsilon λ 数据", "épsilon λ 数据"),
    ],
)
def test_printable_escapes_control_characters_only(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert has_control_chars(text) is (text != shown)
    assert printable(7) == "7"


# --- suggestions ---------------------------------------------------------------------


def test_suggest_one_near_miss():
    assert suggest("gama", ["gamma", "C", "kernel"]) == " (did you mean 'gamma'?)"


def test_suggest_two_and_three_near_misses():
    assert suggest("seed", ["sped", "seeds", "x"]) == " (did you mean 'seeds' or 'sped'?)"
    candidates = ["abcdXY", "abcdeX", "abcdefg", "abcdefgh", "zzz"]
    assert suggest("abcdef", candidates) == (" (did you mean 'abcdefg', 'abcdefgh' or 'abcdeX'?)")


def test_suggest_nothing_for_far_names():
    assert suggest("zzz", ["gamma", "C"]) == ""
    assert suggest("gamma", []) == ""


# --- literals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("3.4e-2", 0.034),
        ("-1", -1),
        ("[64, 64]", [64, 64]),
        ("{'a': 1}", {"a": 1}),
        ("'quoted'", "quoted"),
        ("True", True),
        ("None", None),
        (" 5", 5),
        ("data/x.csv", "data/x.csv"),
        ("rbf", "rbf"),
        ("1 +", "1 +"),
        ("", ""),
    ],
)
def test_parse_literal(text, value):
    assert parse_literal(text) == value
    assert type(parse_literal(text)) is type(value)


def test_parse_literal_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    text = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    assert parse_literal(text) == text
    assert not marker.exists()


@pytest.mark.parametrize("text", ["[1, foo]", "[1, 2", "{'k': 1", "(1,", "'unclosed"])
def test_parse_literal_refuses_an_unfinished_or_broken_literal(text):
    # Text that opens a list, dict, tuple or string is meant as a literal: a typo there is
    # an error to report, not a string to store.
    with pytest.raises(ValueError, match="not a valid Python literal"):
        parse_literal(text)


@pytest.mark.parametrize("text", ["1e400", "-1e400", "[1, 2e308]", "{'lr': -1e999}", "(1e400,)"])
def test_parse_literal_refuses_a_number_beyond_the_largest_float(text):
    # 1e400 would be inf, which standard JSON has no word for (json writes "Infinity").
    with pytest.raises(ValueError, match=r"beyond the largest float \(it would be -?inf"):
        parse_literal(text)


def test_parse_literal_refuses_an_int_longer_than_python_reads_from_text():
    # Else the digits would silently become a string.
    with pytest.raises(ValueError, match="an int of 5000 digits is longer than Python reads"):
        parse_literal("7" * 5000)
    assert parse_literal("7" * 4000) == int("7" * 4000)
    assert parse_literal("0123") == "0123"  # no int literal: a string, as before
    assert parse_literal("1.7e308") == 1.7e308


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_replace_file_writes_whole_files_and_keeps_an_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    path = str(target)
    replace_file(path, lambda f: f.write(b"first"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)
    replace_file(path, lambda f: f.write(b"second"))
    assert (target.read_bytes(), os.stat(path).st_mode & 0o777) == (b"second", 0o640)
    with pytest.raises(ZeroDivisionError):
        replace_file(path, lambda f: 1 / 0)
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["data.json"]  # no temp file left behind


def _closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_password_with_a_space_is_never_shown_nor_stored(tmp_path: Path) -> None:
    pytest.importorskip("pymongo")
    write_project(tmp_path, {"exp_fast.py": "def exp_fast():\n    print('ran')\n"})
    away = f"mongodb://u:open sesame@127.0.0.1:{_closed_port()}/db?serverSelectionTimeoutMS=300"
    shown = away.replace("open sesame", "***")
    done = run_expkit("run", "-q", "--store", "runs", "--store", away, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings and all(f"store {shown} " in line for line in warnings)
    assert "sesame" not in done.stdout + done.stderr
    [spooled] = [line for line in done.stdout.splitlines() if line.startswith("spooled")]
    assert spooled.startswith(f"spooled 1 run(s) for {shown} (not stored yet); deliver with: ")
    assert spooled.endswith(f" '{shown}' (the password in place of ***)")
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert tmp_path / "runs" / "1" / "cout.txt" in files
    assert any((tmp_path / "spool") in path.parents for path in files)
    assert [path for path in files if b"sesame" in path.read_bytes()] == []

    listed = run_expkit("runs", "list", "--store", away, cwd=tmp_path)
    assert listed.returncode != 0
    [error] = listed.stderr.splitlines()
    assert error.startswith(f"ERROR: cannot reach MongoDB at db.runs at {shown}: ")
    assert "sesame" not in listed.stdout + listed.stderr
