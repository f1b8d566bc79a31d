"""Module experiments: ``exp_*`` functions with ``@expkit.config``, named configs and fixtures."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cli_helpers import isolated_imports, only_run, run_expkit, stored_runs, write_project

import expkit
from expkit.errors import MissingConfigError
from expkit.module import ModuleExperiment, module_parts
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl

LOGGER = """\
import pathlib

import expkit

def log(text):
    with pathlib.Path("events.log").open("a") as file:
        file.write(text + "\\n")
"""


def _events(root: Path) -> list[str]:
    path = root / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def _project(root: Path, body: str, **more: str) -> Path:
    return write_project(root, {"exp_m.py": LOGGER + body, **more})


def test_plain_and_yield_fixtures_set_up_and_tear_down_in_reverse_order(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.fixture
def first():
    log("setup first")
    yield 1
    log("teardown first")

@expkit.fixture
def plain(first):
    log("setup plain")
    return first + 1

@expkit.fixture
def third(plain):
    log("setup third")
    yield plain + 1
    log("teardown third")

def exp_uses(third):
    log("body")
    return third
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert only_run(tmp_path / "runs")["result"] == 3
    assert _events(tmp_path) == [
        "setup first",
        "setup plain",
        "setup third",
        "body",
        "teardown third",
        "teardown first",
    ]


def test_teardown_runs_in_reverse_order_when_the_experiment_fails(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.fixture
def outer():
    log("setup outer")
    yield "o"
    log("teardown outer")

@expkit.fixture
def inner(outer):
    log("setup inner")
    yield "i"
    log("teardown inner")

def exp_fails(inner):
    log("body")
    raise RuntimeError("the experiment broke")
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    assert _events(tmp_path) == [
        "setup outer",
        "setup inner",
        "body",
        "teardown inner",
        "teardown outer",
    ]
    run = only_run(tmp_path / "runs")
    assert run["status"] == "FAILED"
    assert "RuntimeError: the experiment broke" in run["fail_trace"][-1]


def test_a_failing_teardown_fails_the_run_but_the_others_still_run(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.fixture
def one():
    yield 1
    log("teardown one")

@expkit.fixture
def two(one):
    yield 2
    raise OSError("cannot close two")

@expkit.fixture
def three(two):
    yield 3
    log("teardown three")

def exp_td(three):
    return three
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    assert _events(tmp_path) == ["teardown three", "teardown one"]
    assert "OSError: cannot close two" in proc.stdout
    assert only_run(tmp_path / "runs")["status"] == "FAILED"


def test_fixtures_are_computed_only_when_requested_and_once_per_run(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.fixture
def base():
    log("base")
    return 1

@expkit.fixture
def left(base):
    return base + 1

@expkit.fixture
def right(base):
    return base + 2

@expkit.fixture
def expensive():
    log("expensive")
    return 0

def exp_both(left, right, base):
    return [left, right, base]

def exp_again(left):
    return left
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Once for each of the two runs, never for the unused fixture.
    assert _events(tmp_path) == ["base", "base"]
    results = [r["result"] for r in stored_runs(tmp_path / "runs")]
    assert results == [[2, 3, 1], 2]


def test_fixtures_request_config_other_fixtures_and_special_names(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.config
def cfg():
    size = 4  # how many numbers

@expkit.fixture
def numbers(size, _rnd, _seed):
    return {"values": [int(v) for v in _rnd.integers(0, 1000, size=size)], "seed": _seed}

@expkit.fixture
def summary(numbers, _run, _config):
    _run.info["fixture_saw"] = sorted(_config)
    return len(numbers["values"])

def exp_sample(numbers, summary, size):
    return [numbers["values"], numbers["seed"], summary, size]
""",
    )
    first = run_expkit(
        "run", "exp_m.py", "--seed", "7", "-o", "size=3", "--store", "a", cwd=tmp_path
    )
    again = run_expkit(
        "run", "exp_m.py", "--seed", "7", "-o", "size=3", "--store", "b", cwd=tmp_path
    )
    other = run_expkit(
        "run", "exp_m.py", "--seed", "8", "-o", "size=3", "--store", "c", cwd=tmp_path
    )
    for proc in (first, again, other):
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run_a, run_b, run_c = (only_run(tmp_path / s) for s in "abc")
    values, seed, summary, size = run_a["result"]
    assert (len(values), summary, size) == (3, 3, 3)
    assert isinstance(seed, int)
    assert run_a["info"]["fixture_saw"] == ["seed", "size"]
    assert run_b["result"] == run_a["result"]  # same seed, same numbers
    assert run_c["result"][0] != values


def test_resolution_order_special_then_fixture_then_config_then_default(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.config
def cfg():
    shared = "config"  # also the name of a fixture
    plain = "config"

@expkit.fixture
def shared():
    return "fixture"

@expkit.fixture
def _seed():
    return "a fixture may not replace a special name"

def exp_order(_seed, shared, plain, missing="default"):
    return [type(_seed).__name__, shared, plain, missing]
""",
    )
    proc = run_expkit("run", "--seed", "11", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert only_run(tmp_path / "runs")["result"] == ["int", "fixture", "config", "default"]


def test_a_misspelt_parameter_fails_before_the_run_with_a_suggestion(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.config
def cfg():
    gamma = 0.7

@expkit.fixture
def dataset():
    log("dataset computed")
    return [1, 2]

def exp_typo(gama):
    return gama

def exp_fixture_typo(datset):
    return datset
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    out = proc.stdout
    assert "exp_typo" in out and "'gama'" in out and "did you mean 'gamma'?" in out
    assert "'datset'" in out and "did you mean 'dataset'?" in out
    assert "Traceback" not in out + proc.stderr
    assert _events(tmp_path) == []  # nothing ran
    assert not list((tmp_path / "runs").glob("[0-9]*"))  # nothing was stored


def test_a_misspelt_parameter_of_a_fixture_is_found_too(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.config
def cfg():
    learning_rate = 0.1

@expkit.fixture
def model(learning_rat):
    return learning_rat

def exp_train(model):
    return model
""",
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "'learning_rat'" in proc.stdout
    assert "did you mean 'learning_rate'?" in proc.stdout


def test_named_configs_of_a_module(tmp_path: Path) -> None:
    _project(
        tmp_path,
        """
@expkit.config
def cfg():
    C = 1.0
    kernel = "rbf"

@expkit.named_config
def linear():
    \"\"\"A linear kernel.\"\"\"
    kernel = "linear"
    C = 0.5

def exp_svm(C, kernel):
    return [C, kernel]
""",
    )
    proc = run_expkit("run", "-w", "linear", "-o", "C=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = only_run(tmp_path / "runs")
    assert run["result"] == [2, "linear"]
    assert run["meta"]["named_configs"] == ["linear"]


# --- from Python --------------------------------------------------------------------------------

MODULE = """\
import expkit

@expkit.config
def cfg():
    a = 2  # the number

@expkit.fixture
def double(a):
    yield a * 2

def exp_double(double, a):
    return [double, a]
"""


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"exp_mod_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Collector:
    """A plugin that keeps what the command collected."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    @hookimpl
    def expkit_collection_finish(self, session: Any) -> None:
        self.items.extend(session.items)


class _Events(expkit.RunObserver):
    def __init__(self) -> None:
        self.events: list[str] = []

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self.events.append("started")
        return "run-1"

    def completed_event(self, stop_time, result):
        self.events.append(f"completed {result!r}")


def test_a_collected_module_experiment_runs_from_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path, {"exp_mod.py": MODULE})
    monkeypatch.chdir(tmp_path)
    with isolated_imports(tmp_path):
        collector = _Collector()
        assert expkit.main(["--collect-only", "-q"], plugins=[collector]) == 0
        (item,) = collector.items
        assert item.nodeid == "exp_mod.py::exp_double"
        assert isinstance(item.experiment, ModuleExperiment)
        observer = _Events()
        item.experiment.observers.append(observer)
        run = item.experiment.run(config_updates={"a": 5})
    assert run.status == "COMPLETED"
    assert run.result == [10, 5]
    assert run.config["a"] == 5
    assert observer.events == ["started", "completed [10, 5]"]


def test_a_module_experiment_built_directly_runs_and_stays_a_plain_function(
    tmp_path: Path,
) -> None:
    write_project(tmp_path, {"exp_mod.py": MODULE})
    module = _import(tmp_path / "exp_mod.py")
    experiment = ModuleExperiment(module.exp_double, "mine", [module_parts(module)])
    run = experiment.run(config_updates={"a": 7})
    assert (run.status, run.result) == ("COMPLETED", [14, 7])
    assert experiment.run().result == [4, 2]
    assert module.exp_double(1, 2) == [1, 2]  # still callable with explicit arguments


def test_a_module_experiment_with_an_unknown_parameter_does_not_start(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_mod.py": "def exp_x(undefined_thing):\n    return 1\n"})
    module = _import(tmp_path / "exp_mod.py")
    experiment = ModuleExperiment(module.exp_x, "x", [module_parts(module)])
    observer = _Events()
    experiment.observers.append(observer)
    with pytest.raises(MissingConfigError, match="'undefined_thing'"):
        experiment.run()
    assert observer.events == []


SACRED_AND_MODULE = {
    "exp_module.py": """\
        import expkit

        @expkit.config
        def cfg():
            C = 1.0  # regularisation strength

        def exp_mod(C):
            return C * 2
        """,
    "exp_classic.py": """\
        from expkit import Experiment

        ex = Experiment("classic")

        @ex.config
        def cfg():
            C = 1.0  # regularisation strength

        @ex.main
        def main(C):
            return C * 2
        """,
}


def test_a_module_experiment_records_what_a_sacred_style_one_records(tmp_path: Path) -> None:
    write_project(tmp_path, SACRED_AND_MODULE)
    proc = run_expkit("run", "-o", "C=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["experiment"]["name"]: r for r in stored_runs(tmp_path / "runs")}
    classic, module = runs["classic"], runs["exp_module.py::exp_mod"]
    assert set(module) == set(classic)
    assert set(module["experiment"]) == set(classic["experiment"])
    assert set(module["host"]) == set(classic["host"])
    assert module["result"] == classic["result"] == 6
    assert module["config"]["C"] == classic["config"]["C"] == 3
    assert "seed" in module["config"]
    assert module["status"] == "COMPLETED"
    sources = dict(module["experiment"]["sources"])
    assert "exp_module.py" in sources
    stored = tmp_path / "runs" / sources["exp_module.py"]
    assert stored.read_text() == (tmp_path / "exp_module.py").read_text()
    assert module["host"]["hostname"] and module["start_time"] and module["stop_time"]


def test_a_fixture_value_is_shared_not_copied(tmp_path) -> None:
    # Fixtures are computed once per run and handed over as they are: objects that cannot be
    # copied (a lock) work, and what one user of the fixture changes the next one sees.
    import subprocess
    import sys
    import textwrap

    (tmp_path / "exp_shared.py").write_text(
        textwrap.dedent(
            """
            import threading
            import expkit

            @expkit.fixture
            def state():
                return {"lock": threading.Lock(), "seen": []}

            @expkit.fixture
            def model(state):
                state["seen"].append("model")
                return "m"

            def exp_uses_both(state, model):
                with state["lock"]:
                    return state["seen"]
            """
        )
    )
    code = "import expkit, sys; sys.exit(expkit.main(['run', 'exp_shared.py', '-u', '-q']))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result=['model']" in done.stdout
