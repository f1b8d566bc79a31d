"""The script command line, ``python exp.py [COMMAND] [with UPDATE ...] [flags]``, for real."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from pathlib import Path

import pluggy
import pytest
from cli_helpers import child_env, run_script

import expkit
import expkit_plugins

EXP = '''\
"""A small experiment for the command-line tests."""
import os

from expkit import Experiment, Ingredient

data = Ingredient("dataset")


@data.config
def data_cfg():
    path = "data.csv"  # where the data lives
    size = 10


@data.capture
def load(path, size):
    return path, size


ex = Experiment("demo", ingredients=[data])


@ex.config
def cfg():
    a = 1  # the first number
    b = 3 * a  # three times a
    name = "x"
    opt = {"lr": 0.1, "layers": [2, 3]}
    extra = None


@ex.named_config
def big():
    """A big a."""
    a = 100
    name = "big"


@ex.named_config
def small():
    a = -1
    name = "small"


@ex.command
def show(a, b):
    """Show a and b."""
    print("SHOW", a, b)


@ex.automain
def main(a, b, name, opt, extra, _run, more=0):
    print("py-out")
    os.write(1, b"fd-out\\n")
    values = {"a": a, "b": b, "name": name, "opt": dict(opt), "extra": extra, "more": more}
    values["dataset"] = load()
    values["beat_interval"] = _run.beat_interval
    print("VALUES", repr(values))
    return a + b
'''

FAILING = """\
from expkit import Experiment

ex = Experiment("failing")


def helper(x):
    raise ValueError("boom %s" % x)


@ex.automain
def main():
    helper(3)
"""


def values_of(proc: subprocess.CompletedProcess) -> dict:
    """The values ``main`` received, as it printed them."""
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("VALUES "))
    return ast.literal_eval(line[len("VALUES ") :])


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a user mistake prints; fails unless there is exactly one and exit code 1."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def only_run_dir(store: Path) -> Path:
    runs = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    (tmp_path / "exp.py").write_text(EXP, encoding="utf-8")
    return tmp_path


# --- running and updating ------------------------------------------------------------


def test_plain_run_uses_the_defaults(exp_dir: Path) -> None:
    proc = run_script("exp.py", cwd=exp_dir)
    values = values_of(proc)
    assert values["a"] == 1 and values["b"] == 3 and values["name"] == "x"
    assert values["dataset"] == ("data.csv", 10)
    assert "Result: 4" in proc.stderr
    assert "Completed after" in proc.stderr


def test_updates_fixed_before_the_scope_runs(exp_dir: Path) -> None:
    values = values_of(run_script("exp.py", "with", "a=23", cwd=exp_dir))
    assert values["a"] == 23
    assert values["b"] == 69


@pytest.mark.parametrize(
    ("token", "key", "expected"),
    [
        ("a=3.4e-2", "a", 0.034),
        ("a=-7", "a", -7),
        ("name='quoted string'", "name", "quoted string"),
        ('name="double"', "name", "double"),
        ("name=bareword", "name", "bareword"),
        ("extra=[1, 'two', 3.0]", "extra", [1, "two", 3.0]),
        ("extra={'k': [1, 2], 'n': None}", "extra", {"k": [1, 2], "n": None}),
        ("extra=(1, 2)", "extra", (1, 2)),
        ("extra=True", "extra", True),
        ("name=None", "name", None),
    ],
)
def test_values_are_python_literals(exp_dir: Path, token: str, key: str, expected: object) -> None:
    values = values_of(run_script("exp.py", "with", token, cwd=exp_dir))
    assert values[key] == expected
    assert type(values[key]) is type(expected)


def test_several_updates_and_paper_example(exp_dir: Path) -> None:
    values = values_of(run_script("exp.py", "with", "a=3.4e-2", "more=0.5", cwd=exp_dir))
    assert values["a"] == 0.034
    assert values["more"] == 0.5


def test_dotted_keys_reach_nested_entries_and_ingredients(exp_dir: Path) -> None:
    values = values_of(
        run_script("exp.py", "with", "opt.lr=0.5", "dataset.path=other.csv", cwd=exp_dir)
    )
    assert values["opt"] == {"lr": 0.5, "layers": [2, 3]}
    assert values["dataset"] == ("other.csv", 10)


def test_named_configs_in_order_and_plain_updates_win(exp_dir: Path) -> None:
    assert values_of(run_script("exp.py", "with", "big", cwd=exp_dir))["a"] == 100
    values = values_of(run_script("exp.py", "with", "big", "small", cwd=exp_dir))
    assert (values["a"], values["name"]) == (-1, "small")
    values = values_of(run_script("exp.py", "with", "a=7", "big", cwd=exp_dir))
    assert (values["a"], values["b"], values["name"]) == (7, 21, "big")


def test_config_files_are_named_updates(exp_dir: Path) -> None:
    (exp_dir / "variant.json").write_text('{"a": 5, "opt": {"lr": 0.25}}')
    (exp_dir / "variant.yaml").write_text("name: from-yaml\n")
    values = values_of(
        run_script("exp.py", "with", "variant.json", "variant.yaml", "a=6", cwd=exp_dir)
    )
    assert values["a"] == 6
    assert values["b"] == 18
    assert values["opt"] == {"lr": 0.25, "layers": [2, 3]}
    assert values["name"] == "from-yaml"


def test_update_values_are_never_evaluated(exp_dir: Path) -> None:
    attack = "__import__('os').system('touch pwned')"
    values = values_of(run_script("exp.py", "-f", "with", f"name={attack}", cwd=exp_dir))
    assert values["name"] == attack
    assert not (exp_dir / "pwned").exists()
    assert not list(exp_dir.glob("pwned*"))


def test_updates_may_come_before_and_after_flags(exp_dir: Path) -> None:
    values = values_of(
        run_script("exp.py", "with", "a=2", "-l", "WARNING", "name=late", cwd=exp_dir)
    )
    assert (values["a"], values["name"]) == (2, "late")


# --- custom commands -----------------------------------------------------------------


def test_custom_command_runs_with_the_config(exp_dir: Path) -> None:
    proc = run_script("exp.py", "show", "with", "a=5", cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert "SHOW 5 15" in proc.stdout
    assert "VALUES" not in proc.stdout
    assert "Running command 'show'" in proc.stderr


def test_unobserved_command_writes_no_run(tmp_path: Path) -> None:
    (tmp_path / "exp.py").write_text(
        "from expkit import Experiment\n"
        "ex = Experiment('cmds')\n"
        "@ex.config\n"
        "def cfg():\n"
        "    a = 1\n"
        "@ex.command(unobserved=True)\n"
        "def peek(a):\n"
        "    print('PEEK', a)\n"
        "@ex.command\n"
        "def record(a):\n"
        "    print('RECORD', a)\n"
        "@ex.automain\n"
        "def main():\n"
        "    pass\n"
    )
    proc = run_script("exp.py", "peek", "-F", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PEEK 1" in proc.stdout
    assert not any(p.is_dir() and p.name.isdigit() for p in (tmp_path / "runs").glob("*"))
    proc = run_script("exp.py", "record", "-F", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_json = load_json(only_run_dir(tmp_path / "runs") / "run.json")
    assert run_json["command"] == "record"


def test_a_run_the_store_refuses_exits_1_and_says_where_it_is_kept(tmp_path: Path) -> None:
    (tmp_path / "exp.py").write_text(
        "from expkit import Experiment\n"
        "ex = Experiment('huge')\n"
        "@ex.config\n"
        "def cfg():\n"
        "    n = 10**5000 + 7  # more digits than Python turns into JSON text\n"
        "@ex.automain\n"
        "def main(n):\n"
        "    return n % 1000\n"
    )
    env = child_env(EXPKIT_SPOOL=str(tmp_path / "spool"))
    proc = run_script("exp.py", "-F", "runs", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Result: 7" in proc.stderr  # it ran to the end
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert "store runs cannot take this run" in error
    assert f"it is kept in {tmp_path / 'spool'}" in error
    proc = run_script("exp.py", "-u", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr  # nothing to store, nothing refused
    # From Python the run is returned, as any run: a driver of many runs goes on.
    driver = "from exp import ex\nrun = ex.run_commandline(['exp.py', '-F', 'runs'])\n"
    driver += "print([o.state for o in run.stored])\n"
    proc = run_script("-c", driver, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "['undeliverable']"


def test_an_option_hook_sees_the_command_line_as_sacreds_gives_it(tmp_path: Path) -> None:
    (tmp_path / "exp.py").write_text(
        "from expkit import Experiment\n"
        "ex = Experiment('hooked')\n"
        "@ex.option_hook\n"
        "def show(options):\n"
        "    shown = [options[k] for k in ('COMMAND', 'UPDATE', 'with', 'help')]\n"
        "    print('HOOK', *shown)\n"
        "@ex.config\n"
        "def cfg():\n"
        "    a = 1\n"
        "@ex.command\n"
        "def other(a):\n"
        "    pass\n"
        "@ex.automain\n"
        "def main(a):\n"
        "    pass\n"
    )
    proc = run_script("exp.py", "with", "a=3", "-u", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HOOK None ['a=3'] True False" in proc.stdout.splitlines()
    proc = run_script("exp.py", "other", "-u", cwd=tmp_path)
    assert "HOOK other [] False False" in proc.stdout.splitlines()


# --- help ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flag_prints_usage_flags_and_commands(exp_dir: Path, flag: str) -> None:
    proc = run_script("exp.py", flag, cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Usage:" in out
    assert "exp.py COMMAND [(with UPDATE...)] [options]" in out
    assert "A small experiment for the command-line tests." in out
    for spelled in ("--comment", "--file_storage", "--beat-interval", "--print-config"):
        assert spelled in out
    assert "show" in out and "Show a and b." in out
    for command in ("print_config", "print_dependencies", "save_config", "print_named_configs"):
        assert command in out
    assert "VALUES" not in out


def test_help_command_without_argument_prints_usage(exp_dir: Path) -> None:
    proc = run_script("exp.py", "help", cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "Commands:" in proc.stdout


def test_help_for_a_command_shows_its_signature_and_doc(exp_dir: Path) -> None:
    proc = run_script("exp.py", "help", "show", cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert "show(a, b)" in proc.stdout
    assert "Show a and b." in proc.stdout
    assert "\b" not in proc.stdout


# --- the flags -----------------------------------------------------------------------

SHORT = ["-F", "runs", "-c", "a note", "-n", "renamed", "-i", "my-id", "-b", "0.25", "-C", "sys"]
LONG = [
    "--file_storage",
    "runs",
    "--comment",
    "a note",
    "--name",
    "renamed",
    "--id",
    "my-id",
    "--beat-interval",
    "0.25",
    "--capture",
    "sys",
]


@pytest.mark.parametrize("flags", [SHORT, LONG], ids=["short", "long"])
def test_recording_flags(exp_dir: Path, flags: list[str]) -> None:
    proc = run_script("exp.py", *flags, "with", "a=2", cwd=exp_dir)
    values = values_of(proc)
    assert values["beat_interval"] == 0.25
    run_dir = exp_dir / "runs" / "my-id"
    run_json = load_json(run_dir / "run.json")
    assert run_json["status"] == "COMPLETED"
    assert run_json["result"] == 8
    assert run_json["meta"]["comment"] == "a note"
    assert run_json["experiment"]["name"] == "renamed"
    assert load_json(run_dir / "config.json")["a"] == 2
    cout = (run_dir / "cout.txt").read_text()
    assert "py-out" in cout
    assert "fd-out" not in cout  # -C sys sees Python's writes only


def test_flag_values_inline(exp_dir: Path) -> None:
    proc = run_script("exp.py", "--file_storage=runs", "--comment=inline", "-iX", cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert load_json(exp_dir / "runs" / "X" / "run.json")["meta"]["comment"] == "inline"


@pytest.mark.parametrize(
    ("mode", "captured"),
    [("fd", {"py-out", "fd-out"}), ("sys", {"py-out"}), ("no", set())],
)
def test_capture_modes(exp_dir: Path, mode: str, captured: set[str]) -> None:
    proc = run_script("exp.py", "-F", "runs", "--capture", mode, cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert "py-out" in proc.stdout and "fd-out" in proc.stdout  # the console still sees all
    cout = (only_run_dir(exp_dir / "runs") / "cout.txt").read_text()
    assert {word for word in ("py-out", "fd-out") if word in cout} == captured


@pytest.mark.parametrize("flag", ["-u", "--unobserved"])
def test_unobserved_stores_nothing(exp_dir: Path, flag: str) -> None:
    proc = run_script("exp.py", "-F", "runs", flag, cwd=exp_dir)
    assert values_of(proc)["a"] == 1
    store = exp_dir / "runs"
    assert not store.exists() or not any(p.is_dir() for p in store.iterdir())


@pytest.mark.parametrize("flags", [["-q", "-P", "3"], ["--queue", "--priority", "3"]])
def test_queue_records_without_running(exp_dir: Path, flags: list[str]) -> None:
    proc = run_script("exp.py", "-F", "runs", *flags, cwd=exp_dir)
    assert proc.returncode == 0, proc.stderr
    assert "VALUES" not in proc.stdout
    assert "Queued-up run" in proc.stderr
    run_json = load_json(only_run_dir(exp_dir / "runs") / "run.json")
    assert run_json["status"] == "QUEUED"
    assert run_json["meta"]["priority"] == 3.0
    assert "queue_time" in run_json["meta"]


@pytest.mark.parametrize("flag", ["-p", "--print-config"])
def test_print_config_flag_prints_then_runs(exp_dir: Path, flag: str) -> None:
    proc = run_script("exp.py", flag, "with", "a=4", cwd=exp_dir)
    values = values_of(proc)
    assert values["a"] == 4
    config_part, _, run_part = proc.stdout.partition("-" * 79 + "\n")
    assert "Configuration (modified, added, typechanged, doc):" in config_part
    assert "a = 4" in config_part
    assert "VALUES" in run_part


@pytest.mark.parametrize("flags", [["-l", "WARNING"], ["--loglevel", "ERROR"], ["-l", "30"]])
def test_loglevel_silences_info_lines(exp_dir: Path, flags: list[str]) -> None:
    proc = run_script("exp.py", *flags, cwd=exp_dir)
    assert values_of(proc)["a"] == 1
    assert "INFO" not in proc.stderr
    assert "Result:" not in proc.stderr


def test_loglevel_debug_keeps_info_lines(exp_dir: Path) -> None:
    proc = run_script("exp.py", "--loglevel", "DEBUG", cwd=exp_dir)
    assert values_of(proc)["a"] == 1
    assert "Result: 4" in proc.stderr


@pytest.mark.parametrize("flag", ["-f", "--force"])
def test_force_allows_unused_added_entries(exp_dir: Path, flag: str) -> None:
    refused = run_script("exp.py", "with", "unused_entry=1", cwd=exp_dir)
    assert "unused_entry" in error_line(refused)
    assert values_of(run_script("exp.py", flag, "with", "unused_entry=1", cwd=exp_dir))["a"] == 1


@pytest.mark.parametrize("flag", ["-t", "--tiny_db"])
def test_tiny_db_records_the_run(exp_dir: Path, flag: str) -> None:
    proc = run_script("exp.py", flag, "tdb", "with", "a=5", cwd=exp_dir)
    assert values_of(proc)["a"] == 5
    documents = load_json(exp_dir / "tdb" / "metadata.json")["runs"]
    assert len(documents) == 1
    (doc,) = documents.values()
    assert doc["status"] == "COMPLETED"
    assert doc["config"]["a"] == 5


@pytest.mark.slow  # the store's connection timeout runs out before the run goes on
@pytest.mark.parametrize("flag", ["-m", "--mongo_db"])
def test_mongo_db_unreachable_does_not_hang(exp_dir: Path, flag: str) -> None:
    start = time.monotonic()
    proc = run_script("exp.py", flag, "127.0.0.1:1:expkit_test", cwd=exp_dir)
    assert time.monotonic() - start < 10
    assert "Traceback" not in proc.stderr
    if proc.returncode == 1:
        assert "127.0.0.1:1" in error_line(proc) or "mongo" in error_line(proc).lower()
    else:
        assert proc.returncode == 0, proc.stderr
        assert "VALUES" in proc.stdout
        assert "WARNING" in proc.stderr and "mongo" in proc.stderr.lower()


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.parametrize("flag", ["-e", "--enforce_clean"])
def test_enforce_clean_in_a_git_repository(exp_dir: Path, flag: str) -> None:
    _git(exp_dir, "init", "-q")
    _git(exp_dir, "add", "exp.py")
    _git(exp_dir, "commit", "-q", "-m", "initial")
    assert values_of(run_script("exp.py", flag, cwd=exp_dir))["a"] == 1
    with (exp_dir / "exp.py").open("a") as f:
        f.write("# an uncommitted change\n")
    line = error_line(run_script("exp.py", flag, cwd=exp_dir))
    assert "uncommitted" in line or "dirty" in line


def test_enforce_clean_outside_a_repository_refuses(exp_dir: Path) -> None:
    line = error_line(run_script("exp.py", "--enforce_clean", cwd=exp_dir))
    assert "git" in line


@pytest.mark.parametrize("flag", ["-d", "--debug"])
def test_debug_shows_the_full_traceback(tmp_path: Path, flag: str) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    proc = run_script("failing.py", flag, cwd=tmp_path)
    assert proc.returncode == 1
    assert "ValueError: boom 3" in proc.stderr
    frames = _frame_files(proc.stderr)
    assert any(_is_expkit_internal(f) for f in frames), frames


@pytest.mark.parametrize("flag", ["-D", "--pdb"])
def test_pdb_starts_the_debugger_after_a_failure(tmp_path: Path, flag: str) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    proc = run_script("failing.py", flag, cwd=tmp_path, input="p x\nq\n")
    assert proc.returncode == 1
    assert "(Pdb)" in proc.stdout
    assert "3" in proc.stdout.split("(Pdb)", 1)[1]  # ``p x`` in the failing frame
    assert "ValueError: boom 3" in proc.stderr


# --- mistakes: one line, exit code 1 ----------------------------------------------------


MISTAKES = [
    (["--no-such-flag"], ["--no-such-flag"]),
    (["-Z"], ["-Z"]),
    (["no_such_command"], ["no_such_command"]),
    (["shw"], ["shw", "show"]),
    (["with", "aa=3"], ["aa", "'a'"]),
    (["with", "missing_named"], ["missing_named"]),
    (["with", "gone.json"], ["gone.json"]),
    (["with", "=3"], ["=3"]),
    (["-F"], ["-F"]),
    (["--comment"], ["--comment"]),
    (["-P", "high"], ["priority", "high"]),
    (["-C", "bogus"], ["bogus"]),
    (["-l", "NOPE"], ["NOPE"]),
    (["-b", "often"], ["often"]),
    (["help", "nope"], ["nope"]),
    (["show", "extra_positional"], ["extra_positional"]),
    (["--unobserved=yes"], ["--unobserved"]),
]


@pytest.mark.parametrize(("args", "words"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_mistakes_give_one_line_and_exit_code_1(
    exp_dir: Path, args: list[str], words: list[str]
) -> None:
    line = error_line(run_script("exp.py", *args, cwd=exp_dir))
    for word in words:
        assert word in line


@pytest.mark.parametrize("token", ["a=[1, 2", "a={'k': 1", "a=(1,", "a='unclosed"])
def test_malformed_literal_is_an_error(exp_dir: Path, token: str) -> None:
    line = error_line(run_script("exp.py", "with", token, cwd=exp_dir))
    assert token.partition("=")[2] in line


def test_broken_config_file_names_the_file(exp_dir: Path) -> None:
    (exp_dir / "broken.json").write_text('{"a": 1,,}')
    line = error_line(run_script("exp.py", "with", "broken.json", cwd=exp_dir))
    assert "broken.json" in line


# --- user tracebacks ------------------------------------------------------------------


def _frame_files(stderr: str) -> list[str]:
    return [
        ln.strip().split('"')[1] for ln in stderr.splitlines() if ln.strip().startswith('File "')
    ]


def _is_expkit_internal(filename: str) -> bool:
    folders = [
        os.path.dirname(os.path.abspath(m.__file__)) + os.sep
        for m in (expkit, expkit_plugins, pluggy)
    ]
    name = os.path.abspath(filename)
    return (
        any(name.startswith(folder) for folder in folders)
        or "expkit_plugins" in name
        or f"{os.sep}pluggy{os.sep}" in name
    )


def test_user_traceback_without_expkit_frames(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    proc = run_script("failing.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: boom 3")
    frames = _frame_files(proc.stderr)
    assert frames, proc.stderr
    assert all(f.endswith("failing.py") for f in frames), frames
    assert not any(_is_expkit_internal(f) for f in frames)
    assert "in helper" in proc.stderr and "in main" in proc.stderr


def test_error_in_a_config_scope_points_at_the_users_line(tmp_path: Path) -> None:
    (tmp_path / "exp.py").write_text(
        "from expkit import Experiment\n"
        "ex = Experiment('scope_error')\n"
        "@ex.config\n"
        "def cfg():\n"
        "    a = 1\n"
        "    b = a / 0  # divides by zero\n"
        "@ex.automain\n"
        "def main(a, b):\n"
        "    pass\n"
    )
    proc = run_script("exp.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "ZeroDivisionError" in proc.stderr
    assert "b = a / 0" in proc.stderr
    frames = _frame_files(proc.stderr)
    assert not any(_is_expkit_internal(f) for f in frames), frames


def test_a_short_flag_keeps_everything_after_it_in_its_value() -> None:
    from expkit import Experiment
    from expkit_plugins.script import parse_argv

    ex = Experiment("flags", interactive=True)
    assert parse_argv(ex, ["-ctry=lr 0.1"])["options"]["--comment"] == "try=lr 0.1"
    assert parse_argv(ex, ["-c=note"])["options"]["--comment"] == "note"
