"""The built-in commands: print_config, print_dependencies, save_config, print_named_configs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy
import pytest
from cli_helpers import child_env, run_script

EXP = '''\
"""Experiment for the command tests."""
import numpy

import cmdhelper
from expkit import Experiment, Ingredient

data = Ingredient("dataset")


@data.config
def data_cfg():
    path = "data.csv"  # where the data lives
    size = 10


@data.named_config
def tiny():
    """A tiny dataset.

    Only for smoke tests.
    """
    size = 2


@data.capture
def load(path, size):
    return path, size


ex = Experiment("demo", ingredients=[data])


@ex.config
def cfg():
    """The demo's configuration."""
    a = 1  # the first number
    name = "x"
    ratio = 0.5  # a ratio
    opt = {"lr": 0.1, "layers": [2, 3]}


@ex.named_config
def big():
    """Make a big."""
    a = 100


@ex.named_config
def quiet():
    name = "q"


@ex.automain
def main(a, name, ratio, opt, added_one=0):
    print("MAIN RAN")
    return cmdhelper.twice(a)
'''

HELPER = "def twice(x):\n    return 2 * x\n"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BLUE, GREEN, RED, DIM, RESET = "\x1b[34m", "\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m"


def run_in_terminal(cwd: Path, *args: str) -> str:
    """``python exp.py args...`` with stdout a pseudo-terminal; returns what it printed there."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "exp.py", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                raise AssertionError("the command printed nothing for 30 s")
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def doc_columns(text: str) -> set[int]:
    """The columns where the ``# doc`` of each entry line starts (colours removed)."""
    plain = ANSI.sub("", text)
    return {ln.index("  # ") + 2 for ln in plain.splitlines() if "  # " in ln and " = " in ln}


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    (tmp_path / "exp.py").write_text(EXP, encoding="utf-8")
    (tmp_path / "cmdhelper.py").write_text(HELPER, encoding="utf-8")
    return tmp_path


@pytest.fixture
def exp_module(exp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The experiment file imported in this process (not as ``__main__``)."""
    monkeypatch.syspath_prepend(str(exp_dir))
    monkeypatch.chdir(exp_dir)
    name = f"exp_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, exp_dir / "exp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("cmdhelper", None)


# --- print_config -------------------------------------------------------------------


def test_print_config_plain_when_not_a_terminal(exp_dir: Path) -> None:
    out = ok(
        run_script("exp.py", "print_config", "with", "a=2", "added_one=3", "name=3", cwd=exp_dir)
    )
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "Configuration (modified, added, typechanged, doc):"
    assert lines[1].strip() == '"""The demo\'s configuration."""'
    assert "MAIN RAN" not in out
    for entry in ("a = 2", "added_one = 3", "name = 3", "ratio = 0.5"):
        assert any(ln.strip().startswith(entry) for ln in lines), entry
    assert re.search(r"^  seed = \d+ +# the random seed for this experiment$", out, re.M)
    # Leaves first, sorted; then sub-dicts, their entries indented two more spaces.
    keys = [ln.strip().split(" ")[0] for ln in lines[2:] if ln.startswith("  ") and " = " in ln]
    assert keys[:5] == ["a", "added_one", "name", "ratio", "seed"]
    assert "  dataset:" in lines and "  opt:" in lines
    assert lines[lines.index("  opt:") + 1].startswith("    layers = [2, 3]")
    assert "    path = 'data.csv'" in out


def test_print_config_docs_aligned(exp_dir: Path) -> None:
    out = ok(run_script("exp.py", "print_config", cwd=exp_dir))
    assert "# the first number" in out and "# a ratio" in out and "# where the data lives" in out
    columns = doc_columns(out)
    assert len(columns) == 1, out
    assert columns.pop() >= 35


def test_print_config_colours_in_a_terminal(exp_dir: Path) -> None:
    out = run_in_terminal(
        exp_dir, "print_config", "with", "a=2", "added_one=3", "name=3", "opt.lr=0.5", "ratio=1"
    )
    header = out.splitlines()[0]
    assert f"{BLUE}modified{RESET}" in header
    assert f"{GREEN}added{RESET}" in header
    assert f"{RED}typechanged{RESET}" in header
    assert f"{DIM}doc{RESET}" in header
    assert f"{BLUE}a = 2{RESET}" in out
    assert f"{GREEN}added_one = 3{RESET}" in out
    assert f"{RED}name = 3{RESET}" in out
    assert f"{BLUE}ratio = 1{RESET}" in out  # a number for a number is a modification
    assert f"{BLUE}opt:{RESET}" in out  # the parent of a changed entry
    assert f"{BLUE}lr = 0.5{RESET}" in out
    # Unchanged entries stay uncoloured, docs stay aligned.
    assert re.search(r"^    layers = \[2, 3\]$", ANSI.sub("", out), re.M)
    assert not re.search(r"\x1b\[3[124]m(layers|path|size)", out)
    assert len(doc_columns(out)) == 1


def test_print_config_is_unobserved(exp_dir: Path) -> None:
    ok(run_script("exp.py", "print_config", "-F", "runs", cwd=exp_dir))
    store = exp_dir / "runs"
    assert not store.exists() or not [p for p in store.iterdir() if not p.name.startswith("_")]


def test_print_config_shows_named_configs_applied(exp_dir: Path) -> None:
    out = ok(run_script("exp.py", "print_config", "with", "big", "dataset.tiny", cwd=exp_dir))
    assert re.search(r"^  a = 100\b", out, re.M)
    assert re.search(r"^    size = 2\b", out, re.M)


def test_run_command_print_config_returns_the_run(
    exp_module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run = exp_module.ex.run_command("print_config", config_updates={"a": 7})
    assert run.status == "COMPLETED"
    assert run.config["a"] == 7
    assert "a" in run.config_modifications.modified
    out = capsys.readouterr().out
    assert "Configuration (modified, added, typechanged, doc):" in out
    assert re.search(r"^  a = 7 +# the first number$", out, re.M)
    assert "MAIN RAN" not in out


# --- print_dependencies -------------------------------------------------------------


def test_print_dependencies_lists_packages_and_sources(exp_dir: Path) -> None:
    out = ok(run_script("exp.py", "print_dependencies", cwd=exp_dir))
    lines = out.splitlines()
    assert lines[0] == "Dependencies:"
    assert f"  {'numpy':<20} == {numpy.__version__}" in lines
    assert "Sources:" in lines
    for name in ("exp.py", "cmdhelper.py"):
        digest = hashlib.md5((exp_dir / name).read_bytes()).hexdigest()
        assert re.search(rf"^  {re.escape(name)} +{digest}$", out, re.M), out
    assert "Version Control:" not in out
    assert "MAIN RAN" not in out


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_print_dependencies_shows_the_git_state(exp_dir: Path) -> None:
    _git(exp_dir, "init", "-q")
    _git(exp_dir, "add", "exp.py", "cmdhelper.py")
    _git(exp_dir, "commit", "-q", "-m", "initial")
    commit = _git(exp_dir, "rev-parse", "HEAD")
    out = ok(run_script("exp.py", "print_dependencies", cwd=exp_dir))
    assert "Version Control:" in out
    (line,) = [ln for ln in out.splitlines() if commit in ln]
    assert line.startswith("  ")  # clean: no M
    with (exp_dir / "cmdhelper.py").open("a") as f:
        f.write("# changed\n")
    out = ok(run_script("exp.py", "print_dependencies", cwd=exp_dir))
    (line,) = [ln for ln in out.splitlines() if commit in ln]
    assert line.startswith("M ")


# --- save_config --------------------------------------------------------------------


def test_save_config_writes_config_json(exp_dir: Path) -> None:
    ok(run_script("exp.py", "save_config", "with", "a=5", "opt.lr=0.5", cwd=exp_dir))
    saved = json.loads((exp_dir / "config.json").read_text())
    assert saved["a"] == 5
    assert saved["opt"] == {"lr": 0.5, "layers": [2, 3]}
    assert saved["dataset"] == {"path": "data.csv", "size": 10}
    assert isinstance(saved["seed"], int)
    assert "config_filename" not in saved


@pytest.mark.parametrize("filename", ["mine.yaml", "mine.yml", "other.json"])
def test_save_config_to_a_chosen_file(exp_dir: Path, filename: str) -> None:
    yaml = pytest.importorskip("yaml")
    ok(
        run_script(
            "exp.py", "save_config", "with", f"config_filename={filename}", "seed=42", cwd=exp_dir
        )
    )
    text = (exp_dir / filename).read_text()
    saved = json.loads(text) if filename.endswith(".json") else yaml.safe_load(text)
    assert saved["seed"] == 42
    assert saved["name"] == "x"
    assert saved["opt"]["layers"] == [2, 3]
    assert "config_filename" not in saved
    assert not (exp_dir / "config.json").exists()


def test_save_config_to_a_folder_that_does_not_exist_is_one_line(exp_dir: Path) -> None:
    target = exp_dir / "missing" / "config.json"
    done = run_script("exp.py", "save_config", "with", f"config_filename={target}", cwd=exp_dir)
    assert done.returncode == 1
    assert f"ERROR: save_config: cannot write {str(target)!r}: No such file or directory" in (
        done.stderr.splitlines()
    )
    assert "Traceback" not in done.stderr


def test_save_config_round_trips_as_a_config_file(exp_dir: Path) -> None:
    ok(run_script("exp.py", "save_config", "with", "a=9", "seed=5", cwd=exp_dir))
    out = ok(run_script("exp.py", "print_config", "with", "config.json", cwd=exp_dir))
    assert re.search(r"^  a = 9\b", out, re.M)
    assert re.search(r"^  seed = 5\b", out, re.M)


def test_save_config_unknown_extension_is_one_line(exp_dir: Path) -> None:
    proc = run_script("exp.py", "save_config", "with", "config_filename=cfg.txt", cwd=exp_dir)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "cfg.txt" in ln]
    assert len(errors) == 1
    assert not (exp_dir / "cfg.txt").exists()


# --- print_named_configs ---------------------------------------------------------------


def test_print_named_configs_with_docs(exp_dir: Path) -> None:
    out = ok(run_script("exp.py", "print_named_configs", cwd=exp_dir))
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "Named Configurations (doc):"
    (big,) = [ln for ln in lines if ln.startswith("  big")]
    assert big.endswith("# Make a big.")
    assert big.index("#") >= 30
    assert "  quiet" in lines  # no docstring, no comment
    start = lines.index("  dataset.tiny")
    assert '"""A tiny dataset.' in lines[start + 1]
    assert "Only for smoke tests." in out
    assert "MAIN RAN" not in out


def test_print_named_configs_when_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "exp.py").write_text(
        "from expkit import Experiment\n"
        "ex = Experiment('bare')\n"
        "@ex.automain\n"
        "def main():\n"
        "    pass\n"
    )
    out = ok(run_script("exp.py", "print_named_configs", cwd=tmp_path))
    assert out.splitlines() == ["Named Configurations (doc):", "  No named configs"]


def test_print_named_configs_doc_dim_in_a_terminal(exp_dir: Path) -> None:
    out = run_in_terminal(exp_dir, "print_named_configs")
    assert f"{DIM}# Make a big.{RESET}" in out


# --- help for commands -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("print_config", ["print_config", "configuration"]),
        ("save_config", ["save_config", "config_filename"]),
        ("main", ["main(a, name, ratio, opt, added_one=0)"]),
    ],
)
def test_help_for_builtin_and_main_commands(exp_dir: Path, command: str, words: list[str]) -> None:
    out = ok(run_script("exp.py", "help", command, cwd=exp_dir))
    for word in words:
        assert word in out
    assert "MAIN RAN" not in out


# --- expkit config ------------------------------------------------------------------------------

CONFIG_PROJECT = {
    "exp_one.py": """\
        import expkit

        @expkit.config
        def cfg():
            C = 1.0  # regularisation strength
            kernel = "rbf"

        def exp_svm(C, kernel, _run):
            _run.log_scalar("loss", 1.0)
            return C
        """,
    "exp_two.py": """\
        def exp_a():
            return 1

        def exp_b():
            return 2
        """,
}


def test_config_of_a_file_with_one_experiment_prints_only_the_config(tmp_path: Path) -> None:
    from cli_helpers import run_expkit, write_project

    write_project(tmp_path, CONFIG_PROJECT)
    proc = run_expkit("config", "exp_one.py", "-o", "C=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no "Running command", "Started", "Completed after" lines
    lines = proc.stdout.splitlines()
    assert lines[0] == "Configuration (modified, added, typechanged, doc):"
    assert re.fullmatch(r"  C = 3 +# regularisation strength", lines[1]), lines
    assert lines[2] == "  kernel = 'rbf'"
    assert re.fullmatch(r"  seed = \d+ +# the random seed for this experiment", lines[3]), lines
    assert len(lines) == 4
    assert not (tmp_path / "runs").exists()
    same = run_expkit("config", "exp_one.py::exp_svm", "-o", "C=3", "--seed", "5", cwd=tmp_path)
    assert same.stdout.splitlines()[:3] == lines[:3]
    assert "seed = 5 " in same.stdout


def test_config_of_a_file_with_several_experiments_names_them(tmp_path: Path) -> None:
    from cli_helpers import error_lines, run_expkit, write_project

    write_project(tmp_path, CONFIG_PROJECT)
    proc = run_expkit("config", "exp_two.py", cwd=tmp_path)
    assert proc.returncode == 4
    assert error_lines(proc.stderr) == [
        "ERROR: exp_two.py holds 2 experiments; name one: expkit config exp_two.py::exp_a, "
        "expkit config exp_two.py::exp_b"
    ]
    proc = run_expkit("config", "exp_one.py", "-o", "kernl=linear", cwd=tmp_path)
    assert error_lines(proc.stderr) == [
        "ERROR: exp_one.py::exp_svm: Added new config entry that is not used anywhere: "
        "'kernl' = 'linear' (did you mean 'kernel'?); pass -f/--force to add it anyway"
    ]


def test_config_help_shows_its_own_options(tmp_path: Path) -> None:
    from cli_helpers import run_expkit, write_project

    write_project(tmp_path, CONFIG_PROJECT)
    proc = run_expkit("config", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: expkit config NODEID|FILE [options]\n")
    assert "-o KEY=VALUE" in proc.stdout and "--with NAMED" in proc.stdout
    assert "--store" not in proc.stdout and "--columns" not in proc.stdout
