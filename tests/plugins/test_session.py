"""``expkit run``'s options, ``--collect-only``, ``expkit config`` and ``[tool.expkit]``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import child_env, error_lines, only_run, run_expkit, stored_runs, write_project

from expkit.nodes import ExitCode

EXP = '''\
"""Experiments for the option tests."""
import os
import sys

import expkit


@expkit.config
def cfg():
    """Settings of the model."""
    C = 1.0  # regularisation strength
    gamma = 0.7  # kernel width
    name = "svm"
    layers = (64, 64)  # a tuple stays a tuple
    opt = {"lr": 0.1, "momentum": 0.9}


@expkit.named_config
def wide():
    """A wide kernel."""
    gamma = 5.0
    name = "wide"


def exp_values(C, gamma, name, layers, opt, _seed):
    print("py-out")
    sys.stdout.flush()
    os.write(1, b"fd-out\\n")
    return {
        "C": C,
        "gamma": gamma,
        "name": name,
        "layers": [type(layers).__name__, list(layers)],
        "opt": opt,
        "types": [type(C).__name__, type(name).__name__],
    }
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, {"exp_values.py": EXP})


def _run(project: Path, *args: str, store: str = "runs") -> dict:
    proc = run_expkit("run", "exp_values.py", "--store", store, *args, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return only_run(project / store)


# --- -o -----------------------------------------------------------------------------------------


def test_defaults_reach_the_function(project: Path) -> None:
    result = _run(project)["result"]
    assert result["C"] == 1.0 and result["gamma"] == 0.7 and result["name"] == "svm"
    assert result["layers"] == ["tuple", [64, 64]]
    assert result["opt"] == {"lr": 0.1, "momentum": 0.9}


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("C=3", "C", 3),
        ("C=3.4e-2", "C", 0.034),
        ("name=rbf", "name", "rbf"),
        ("name='3'", "name", "3"),
        ('name="two words"', "name", "two words"),
        ("name=None", "name", None),
        ("layers=[128, 64, 32]", "layers", [128, 64, 32]),
        ("opt={'lr': 0.5}", "opt", {"lr": 0.5, "momentum": 0.9}),
        ("opt.lr=0.01", "opt", {"lr": 0.01, "momentum": 0.9}),
        ("C=True", "C", True),
    ],
)
def test_o_takes_python_literals(project: Path, override: str, key: str, expected: object) -> None:
    run = _run(project, "-o", override)
    assert run["config"][key] == expected
    if key != "layers":
        assert run["result"][key] == expected


def test_o_is_repeatable_and_a_tuple_stays_a_tuple(project: Path) -> None:
    run = _run(project, "-o", "C=2", "-o", "gamma=0.5", "-o", "layers=(1, 2, 3)")
    assert (run["config"]["C"], run["config"]["gamma"]) == (2, 0.5)
    assert run["meta"]["config_updates"] == {"C": 2, "gamma": 0.5, "layers": [1, 2, 3]}
    assert run["result"]["layers"] == ["tuple", [1, 2, 3]]
    assert run["config"]["layers"] == [1, 2, 3]  # stored as a JSON list


def test_o_with_a_number_for_a_string_keeps_the_number(project: Path) -> None:
    run = _run(project, "-o", "name=3")
    assert run["result"]["types"] == ["float", "int"]


# --- -w -----------------------------------------------------------------------------------------


def test_w_applies_a_named_config_and_o_wins(project: Path) -> None:
    run = _run(project, "-w", "wide", "-o", "name=mine")
    assert run["config"]["gamma"] == 5.0
    assert run["config"]["name"] == "mine"
    assert run["meta"]["named_configs"] == ["wide"]


def test_w_applies_a_config_file_in_order(project: Path) -> None:
    (project / "narrow.json").write_text(json.dumps({"gamma": 0.01, "C": 9.0}))
    run = _run(project, "-w", "wide", "-w", "narrow.json", "-o", "C=4")
    assert run["config"]["gamma"] == 0.01  # the file came after the named config
    assert run["config"]["C"] == 4  # -o wins over both
    assert run["config"]["name"] == "wide"


def test_w_with_an_unknown_name_is_a_usage_error(project: Path) -> None:
    proc = run_expkit("run", "exp_values.py", "-w", "wdie", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert "'wdie'" in proc.stdout + proc.stderr
    assert "did you mean 'wide'?" in proc.stdout + proc.stderr


# --- stores -------------------------------------------------------------------------------------


def test_the_default_store_is_runs_under_the_root(project: Path) -> None:
    (project / "sub").mkdir()
    proc = run_expkit("run", "../exp_values.py", cwd=project / "sub")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert only_run(project / "runs")["status"] == "COMPLETED"
    assert not (project / "sub" / "runs").exists()


def test_store_a_folder_and_tinydb_at_once(project: Path) -> None:
    proc = run_expkit(
        "run", "exp_values.py", "--store", "folder", "--store", "tinydb://db.json", cwd=project
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    in_folder = only_run(project / "folder")
    document = json.loads((project / "db.json").read_text())
    (run,) = document["runs"].values()
    assert run["status"] == "COMPLETED"
    assert run["config"] == in_folder["config"]
    assert run["experiment"]["name"] == "exp_values.py::exp_values"
    assert not (project / "runs").exists()


def test_unobserved_writes_nothing(project: Path) -> None:
    def listing() -> list[str]:
        return sorted(p.name for p in project.iterdir() if p.name != "__pycache__")

    before = listing()
    proc = run_expkit("run", "exp_values.py", "-u", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listing() == before
    assert "id=" not in proc.stdout
    assert "store: none" in proc.stdout


# --- capture, seed, comment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"), [("fd", "py-out\nfd-out\n"), ("sys", "py-out\n"), ("no", "")]
)
def test_capture_modes(project: Path, mode: str, expected: str) -> None:
    run = _run(project, "--capture", mode)
    assert _printed(run["cout"]) == expected
    # The run's INFO lines are kept though the terminal shows them only with -v.
    assert ('Started run with ID "1"' in run["cout"]) == (mode != "no")
    assert run["meta"]["options"]["--capture"] == mode


def _printed(cout: str) -> str:
    return "".join(li for li in cout.splitlines(keepends=True) if not li.startswith("INFO - "))


def test_capture_defaults_to_fd(project: Path) -> None:
    assert _printed(_run(project)["cout"]) == "py-out\nfd-out\n"


def test_seed_is_recorded_and_fresh_otherwise(project: Path) -> None:
    assert _run(project, "--seed", "1234", store="a")["config"]["seed"] == 1234
    assert (
        _run(project, "--seed", "1234", store="b")["result"]
        == _run(project, "--seed", "1234", store="c")["result"]
    )
    seeds = {_run(project, store=s)["config"]["seed"] for s in ("d", "e", "f")}
    assert len(seeds) == 3 and all(isinstance(s, int) for s in seeds)


def test_comment_is_stored_in_meta(project: Path) -> None:
    run = _run(project, "--comment", "wider kernel, second try")
    assert run["meta"]["comment"] == "wider kernel, second try"


# --- -x, -q, -v ---------------------------------------------------------------------------------

THREE = {
    "exp_a.py": "def exp_a():\n    return 'a'\n",
    "exp_b.py": "def exp_b():\n    raise ValueError('b broke')\n",
    "exp_c.py": "def exp_c():\n    return 'c'\n",
}


def test_all_runs_go_on_after_a_failure(tmp_path: Path) -> None:
    write_project(tmp_path, THREE)
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.RUNS_FAILED
    assert [r["status"] for r in stored_runs(tmp_path / "runs")] == [
        "COMPLETED",
        "FAILED",
        "COMPLETED",
    ]


def test_exitfirst_stops_after_the_first_failure(tmp_path: Path) -> None:
    write_project(tmp_path, THREE)
    proc = run_expkit("run", "-x", cwd=tmp_path)
    assert proc.returncode == ExitCode.RUNS_FAILED
    runs = stored_runs(tmp_path / "runs")
    assert [r["experiment"]["name"] for r in runs] == ["exp_a.py::exp_a", "exp_b.py::exp_b"]
    assert "exp_c.py::exp_c" not in proc.stdout.split("collected", 1)[1]
    assert re.search(
        r"^!+ stopping after 1 failure \(-x\): 1 experiment not run !+$", proc.stdout, re.M
    )
    assert re.search(r"1 failed, 1 completed in \d+\.\d\ds", proc.stdout)


def test_quiet_drops_the_header_and_verbose_shows_the_log(project: Path) -> None:
    quiet = run_expkit("run", "exp_values.py", "-u", "-q", cwd=project)
    assert quiet.returncode == 0
    assert "expkit session starts" not in quiet.stdout and "rootdir:" not in quiet.stdout
    assert re.search(r"^exp_values\.py::exp_values  COMPLETED ", quiet.stdout, re.M)
    assert re.search(r"^1 completed in \d+\.\d\ds$", quiet.stdout, re.M)
    normal = run_expkit("run", "exp_values.py", "-u", cwd=project)
    assert "Started" not in normal.stderr
    verbose = run_expkit("run", "exp_values.py", "-u", "-v", cwd=project)
    assert "expkit session starts" in verbose.stdout
    assert "Started" in verbose.stderr


# --- -p -----------------------------------------------------------------------------------------


UNSEEDED = """\
import expkit

@expkit.config
def cfg():
    n = 3

def exp_plain(n, _run):
    return n
"""


def test_p_no_seeding_leaves_no_seed(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_plain.py": UNSEEDED})
    proc = run_expkit("run", "-p", "no:seeding", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = only_run(tmp_path / "runs")
    assert run["result"] == 3
    assert "seed" not in run["config"]


def test_asking_for_seed_without_the_seeding_plugin_says_so(project: Path) -> None:
    proc = run_expkit("run", "exp_values.py", "-p", "no:seeding", cwd=project)
    assert proc.returncode != 0
    assert "NoneType" not in proc.stdout + proc.stderr
    assert "_seed" in proc.stdout + proc.stderr


PLUGIN = """\
import pathlib

from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_report_header(config):
    return ["myplugin: loaded"]


@hookimpl
def expkit_run_completed(run):
    pathlib.Path("plugin_saw.txt").write_text(repr(run.result))
"""


def test_p_loads_a_module_from_pythonpath(project: Path) -> None:
    (project / "site").mkdir()
    (project / "site" / "myplugin.py").write_text(PLUGIN)
    env = child_env(PYTHONPATH=str(project / "site"))
    proc = run_expkit("run", "exp_values.py", "-u", "-p", "myplugin", cwd=project, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "myplugin: loaded" in proc.stdout.splitlines()
    assert (project / "plugin_saw.txt").read_text().startswith("{'C': 1.0")
    without = run_expkit("run", "exp_values.py", "-u", cwd=project, env=env)
    assert "myplugin: loaded" not in without.stdout


# --- --collect-only -----------------------------------------------------------------------------


def test_collect_only_shows_the_tree_with_config_and_runs_nothing(project: Path) -> None:
    write_project(project, {"sub/exp_more.py": "def exp_more(depth=3):\n    return depth\n"})
    proc = run_expkit("--collect-only", cwd=project)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = lines.index("<Module exp_values.py>")
    assert lines[start : start + 8] == [
        "<Module exp_values.py>",
        "  <Experiment exp_values>",
        "    C = 1.0",
        "    gamma = 0.7",
        "    name = 'svm'",
        "    layers = (64, 64)",
        "    opt.lr = 0.1",
        "    opt.momentum = 0.9",
    ]
    assert "<Module sub/exp_more.py>" in lines
    assert re.search(r"=+ 2 experiments collected in \d+\.\d\ds =+$", proc.stdout, re.M)
    assert not (project / "runs").exists()
    assert "py-out" not in proc.stdout


def test_collect_only_quiet_prints_node_ids(project: Path) -> None:
    write_project(project, {"sub/exp_more.py": "def exp_more():\n    return 1\n"})
    proc = run_expkit("run", "--collect-only", "-q", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == [
        "exp_values.py::exp_values",
        "sub/exp_more.py::exp_more",
    ]


def test_collect_only_in_an_empty_folder_is_exit_code_5(tmp_path: Path) -> None:
    write_project(tmp_path, {})
    proc = run_expkit("--collect-only", cwd=tmp_path)
    assert proc.returncode == ExitCode.NO_EXPERIMENTS_COLLECTED


# --- expkit config ------------------------------------------------------------------------------


def test_config_prints_the_resolved_config_with_docs(project: Path) -> None:
    proc = run_expkit(
        "config", "exp_values.py::exp_values", "-o", "C=3", "-o", "opt.lr=0.5", cwd=project
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Configuration")
    assert '  """Settings of the model."""' in lines
    assert re.search(r"^  C = 3 +# regularisation strength$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^  gamma = 0\.7 +# kernel width$", proc.stdout, re.M)
    # The comments line up.
    columns = {line.index("#") for line in lines if line.startswith("  ") and "#" in line}
    assert len(columns) == 1, proc.stdout
    assert "    lr = 0.5" in lines and "    momentum = 0.9" in lines
    assert "\x1b[" not in proc.stdout  # plain when not a terminal
    assert not (project / "runs").exists()


def test_config_with_named_config(project: Path) -> None:
    proc = run_expkit("config", "exp_values.py::exp_values", "-w", "wide", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^  gamma = 5\.0 +# kernel width$", proc.stdout, re.M)
    assert re.search(r"^  name = 'wide'$", proc.stdout, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exp_values.py", "exp_values.py"], "one node id or file"),
        (["exp_values.py::exp_values", "-o", "gama=1"], "did you mean 'gamma'?"),
        (["exp_values.py::exp_values", "-w", "nope"], "'nope'"),
    ],
    ids=["two-node-ids", "unknown-key", "unknown-named-config"],
)
def test_config_mistakes_are_one_line(project: Path, args: list[str], message: str) -> None:
    proc = run_expkit("config", *args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# --- [tool.expkit] ------------------------------------------------------------------------------


def test_pyproject_store_and_capture(tmp_path: Path) -> None:
    write_project(
        tmp_path, {"exp_values.py": EXP}, pyproject='store = "results"\ncapture = "sys"\n'
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = only_run(tmp_path / "results")
    assert _printed(run["cout"]) == "py-out\n"
    assert not (tmp_path / "runs").exists()
    # The command line wins over the file.
    proc = run_expkit("run", "exp_values.py", "--capture", "fd", "--store", "cli", cwd=tmp_path)
    assert _printed(only_run(tmp_path / "cli")["cout"]) == "py-out\nfd-out\n"


def test_pyproject_store_is_relative_to_the_root(tmp_path: Path) -> None:
    write_project(
        tmp_path, {"exps/exp_values.py": EXP, "exps/notes.txt": ""}, pyproject='store = "results"\n'
    )
    proc = run_expkit("run", "exp_values.py", cwd=tmp_path / "exps")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert only_run(tmp_path / "results")["status"] == "COMPLETED"
    assert not (tmp_path / "exps" / "results").exists()


def test_pyproject_store_can_be_tinydb(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_values.py": EXP}, pyproject='store = "tinydb://runs.json"\n')
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = json.loads((tmp_path / "runs.json").read_text())["runs"].values()
    assert run["status"] == "COMPLETED"


def test_pyproject_plugins_block_and_load(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {"exp_plain.py": UNSEEDED, "site/myplugin.py": PLUGIN},
        pyproject='plugins = ["no:seeding", "myplugin"]\n',
    )
    env = child_env(PYTHONPATH=str(tmp_path / "site"))
    proc = run_expkit("run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "myplugin: loaded" in proc.stdout.splitlines()
    assert "seed" not in only_run(tmp_path / "runs")["config"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("colour = true\n", "unknown key 'colour'"),
        ('capture = "everything"\n', "capture"),
        ("paths = []\n", "paths"),
        ("paths = [\n", "not valid TOML"),
    ],
    ids=["unknown-key", "bad-capture", "empty-paths", "broken-toml"],
)
def test_a_bad_pyproject_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    write_project(tmp_path, {"exp_values.py": EXP}, pyproject=body)
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE_ERROR
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0] and "pyproject.toml" in lines[0], proc.stderr


# --- overrides per experiment -------------------------------------------------------------------

MIXED = {
    "exp_a.py": """\
        import expkit

        @expkit.config
        def cfg():
            C = 1.0

        def exp_a(C):
            return C
        """,
    "exp_b.py": """\
        import expkit

        @expkit.config
        def cfg():
            D = 1.0

        def exp_b(D):
            return D
        """,
}


def test_an_override_applies_to_the_experiments_that_have_the_key(tmp_path: Path) -> None:
    write_project(tmp_path, MIXED)
    proc = run_expkit("run", "-o", "C=3", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    runs = stored_runs(tmp_path / "runs")
    assert [(r["experiment"]["name"], r["result"]) for r in runs] == [("exp_a.py::exp_a", 3)]
    (line,) = [line for line in proc.stdout.splitlines() if "exp_b.py::exp_b" in line]
    assert "ERROR" in line and "'C'" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_the_advice_for_an_unknown_key_can_be_followed(tmp_path: Path) -> None:
    write_project(tmp_path, MIXED)
    proc = run_expkit("run", "exp_b.py", "-o", "C=3", cwd=tmp_path)
    (line,) = [line for line in proc.stdout.splitlines() if "exp_b.py::exp_b" in line]
    flags = re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line.split("  ", 3)[-1])
    assert flags, line  # the advice names a flag to retry with
    for flag in flags:
        retry = run_expkit("run", "exp_b.py", "-u", "-o", "C=3", flag, cwd=tmp_path)
        assert "unrecognized arguments" not in retry.stderr, (line, retry.stderr)
