"""Seeding: the root ``seed`` entry, seeded global generators, a ``_seed``/``_rnd`` per function."""

from __future__ import annotations

import json
import random
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy
import pytest
from cli_helpers import child_env, only_run, run_expkit, run_script, write_project

from expkit import Experiment, Ingredient, RunObserver
from expkit.errors import ConfigError
from expkit.pluginmanager import create_plugin_manager
from expkit.settings import SETTINGS

QUIET = {"--capture": "sys", "--beat-interval": 0}
SEED_DOC = "the random seed for this experiment"


def _draws(ex: Experiment) -> None:
    """Give ``ex`` two captured functions drawing from ``_seed``/``_rnd`` and a main using them."""

    @ex.capture
    def first(_seed, _rnd):
        return [_seed, int(_rnd.integers(0, 10**9))]

    @ex.capture
    def second(_seed):
        return _seed

    @ex.main
    def main(extra_first_calls=0):
        for _ in range(extra_first_calls):
            first()
        return {
            "random": random.random(),
            "numpy": float(numpy.random.rand()),
            "first": [first(), first()],
            "second": second(),
        }


@pytest.fixture
def ex() -> Experiment:
    """An experiment whose main reports global and per-function random numbers."""
    experiment = Experiment("seeded", plugin_manager=create_plugin_manager())
    _draws(experiment)
    return experiment


def _result(ex: Experiment, **updates: Any) -> dict:
    return ex.run(config_updates=updates, options=QUIET).result


# --- the seed entry ---------------------------------------------------------------------


def test_every_run_gets_a_seed_entry_and_different_runs_different_seeds(ex: Experiment) -> None:
    seeds = [ex.run(options=QUIET).config["seed"] for _ in range(6)]
    assert all(isinstance(s, int) and 1 <= s <= 10**9 for s in seeds)
    assert len(set(seeds)) == len(seeds)


def test_a_given_seed_is_kept_and_counts_as_modified(ex: Experiment) -> None:
    run = ex.run(config_updates={"seed": 123}, options=QUIET)
    assert run.config["seed"] == 123
    assert "seed" in run.config_modifications.modified
    assert "seed" not in run.config_modifications.added


def test_seeding_the_globals_does_not_fix_the_next_generated_seed(ex: Experiment) -> None:
    # Runs with the same given seed leave random's state equal; the next seed must still be new.
    ex.run(config_updates={"seed": 1}, options=QUIET)
    after_first = ex.run(options=QUIET).config["seed"]
    ex.run(config_updates={"seed": 1}, options=QUIET)
    after_second = ex.run(options=QUIET).config["seed"]
    assert after_first != after_second


def test_the_seed_entry_is_documented_in_print_config(tmp_path: Path) -> None:
    script = tmp_path / "exp_doc.py"
    script.write_text(
        textwrap.dedent(
            """
            from expkit import Experiment

            ex = Experiment("doc")

            @ex.config
            def cfg():
                rate = 0.1  # the learning rate

            @ex.automain
            def main(rate):
                return rate
            """
        )
    )
    proc = run_script(script, "print_config", "with", "seed=77", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seed_line = next(line for line in proc.stdout.splitlines() if "seed" in line)
    assert "seed = 77" in seed_line
    assert seed_line.rstrip().endswith(f"# {SEED_DOC}")


# --- global generators ------------------------------------------------------------------


def test_the_seed_seeds_random_and_numpys_global_generator(ex: Experiment) -> None:
    result = _result(ex, seed=2024)
    assert result["random"] == random.Random(2024).random()
    assert result["numpy"] == numpy.random.RandomState(2024).rand()


def test_same_seed_same_numbers_different_seed_different_numbers(ex: Experiment) -> None:
    one, again, other = _result(ex, seed=7), _result(ex, seed=7), _result(ex, seed=8)
    assert one == again
    for key in ("random", "numpy", "first", "second"):
        assert one[key] != other[key], key


def test_a_generated_seed_reproduces_its_run(ex: Experiment) -> None:
    original = ex.run(options=QUIET)
    again = ex.run(config_updates={"seed": original.config["seed"]}, options=QUIET)
    assert again.result == original.result


LATE_NUMPY = """
import json
import sys

from expkit import Experiment

ex = Experiment("late")


@ex.main
def main(use_numpy=False):
    if not use_numpy:
        return None
    loaded_before = "numpy" in sys.modules
    import numpy

    return [loaded_before, float(numpy.random.rand())]


if __name__ == "__main__":
    options = {"--capture": "no"}
    ex.run(config_updates={"seed": 5}, options=options)  # a run that leaves numpy alone
    run = ex.run(config_updates={"seed": 6, "use_numpy": True}, options=options)
    print(json.dumps(run.result))
"""


def test_numpy_imported_only_during_the_run_is_still_seeded(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(LATE_NUMPY)
    proc = run_script(script, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded_before, value = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded_before is False  # numpy really was imported by main, not by expkit
    assert value == numpy.random.RandomState(6).rand()


def test_an_imported_torch_is_seeded(ex: Experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded: list[tuple[str, int]] = []
    torch = types.ModuleType("torch")
    torch.manual_seed = lambda s: seeded.append(("cpu", s))  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: True, manual_seed_all=lambda s: seeded.append(("cuda", s))
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    _result(ex, seed=31)
    assert seeded == [("cpu", 31), ("cuda", 31)]


# --- _seed and _rnd -------------------------------------------------------------------------


def test_each_function_gets_its_own_deterministic_seeds(ex: Experiment) -> None:
    result = _result(ex, seed=42)
    again = _result(ex, seed=42)
    (seed_1, number_1), (seed_2, number_2) = result["first"]
    assert result["first"] == again["first"]
    assert result["second"] == again["second"]
    assert seed_1 != seed_2 and number_1 != number_2  # a new seed on every call
    assert result["second"] not in (seed_1, seed_2)  # a stream of its own
    assert all(1 <= s <= 10**9 for s in (seed_1, seed_2, result["second"]))


def test_rnd_is_a_numpy_generator_seeded_with_the_calls_seed() -> None:
    ex = Experiment("rnd", plugin_manager=create_plugin_manager())

    @ex.main
    def main(_seed, _rnd):
        return _seed, type(_rnd), float(_rnd.random())

    seed, kind, value = ex.run(options=QUIET).result
    assert kind is numpy.random.Generator
    assert value == numpy.random.default_rng(seed).random()


def test_the_legacy_setting_makes_rnd_a_random_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SETTINGS.CONFIG, "NUMPY_RANDOM_LEGACY_API", True)
    ex = Experiment("legacy", plugin_manager=create_plugin_manager())

    @ex.main
    def main(_seed, _rnd):
        return _seed, type(_rnd), int(_rnd.randint(0, 100))  # Sacred's 06_randomness calls it

    seed, kind, value = ex.run(options=QUIET).result
    assert kind is numpy.random.RandomState
    assert value == numpy.random.RandomState(seed).randint(0, 100)


def test_calls_in_one_function_do_not_shift_another_functions_stream(ex: Experiment) -> None:
    plain = _result(ex, seed=9)
    busy = _result(ex, seed=9, extra_first_calls=5)
    assert busy["second"] == plain["second"]
    assert busy["first"] != plain["first"]


def test_seeds_follow_the_function_name_not_the_experiment_name() -> None:
    # Renaming the experiment (a module experiment's name is its node id, a path) keeps
    # the numbers; a function of an ingredient has a stream of its own.
    def build(name: str) -> Experiment:
        data = Ingredient("dataset")

        @data.capture
        def load(_seed):
            return _seed

        ex = Experiment(name, ingredients=[data], plugin_manager=create_plugin_manager())

        @ex.capture
        def load(_seed):  # noqa: F811 - the same name as the ingredient's
            return _seed

        @ex.main
        def main():
            return [load(), data.captured_functions[0]()]

        return ex

    first = build("one").run(config_updates={"seed": 3}, options=QUIET).result
    second = build("sub/exp_two.py::two").run(config_updates={"seed": 3}, options=QUIET).result
    assert first == second
    assert first[0] != first[1]


SAME_NUMBERS = """
import json
import random

from expkit import Experiment

ex = Experiment("again")


@ex.capture
def draw(_seed, _rnd):
    return [_seed, float(_rnd.random())]


@ex.main
def main():
    return [draw(), draw(), random.random()]


if __name__ == "__main__":
    print(json.dumps(ex.run(config_updates={"seed": 99}, options={"--capture": "no"}).result))
"""


def test_the_same_seed_gives_the_same_numbers_in_another_process(tmp_path: Path) -> None:
    script = tmp_path / "again.py"
    script.write_text(SAME_NUMBERS)
    results = []
    for hash_seed in ("1", "2"):  # str hashing differs between the two processes
        proc = run_script(script, cwd=tmp_path, env=child_env(PYTHONHASHSEED=hash_seed))
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert results[0][0] != results[0][1]


# --- bad seeds ----------------------------------------------------------------------------


class Events(RunObserver):
    """Notes which events arrive."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self.names.append("started")

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self.names.append("heartbeat")

    def completed_event(self, stop_time, result):
        self.names.append("completed")

    def failed_event(self, fail_time, fail_trace):
        self.names.append("failed")


def _main_that_notes_calls(ex: Experiment) -> list[int]:
    called: list[int] = []

    @ex.main
    def main():
        called.append(1)

    return called


@pytest.mark.parametrize("bad", ["abc", 1.5, True, None, [1]])
def test_a_seed_that_is_no_integer_is_a_clear_error(bad: Any) -> None:
    ex = Experiment("bad_seed", plugin_manager=create_plugin_manager())
    called = _main_that_notes_calls(ex)
    with pytest.raises(ConfigError) as info:
        ex.run(config_updates={"seed": bad}, options=QUIET)
    message = str(info.value)
    assert "'seed'" in message and repr(bad) in message and "\n" not in message
    assert called == []


def test_a_bad_seed_stops_the_run_before_any_store_hears_of_it() -> None:
    ex = Experiment("bad_seed", plugin_manager=create_plugin_manager())
    called = _main_that_notes_calls(ex)
    events = Events()
    ex.observers.append(events)
    with pytest.raises(ConfigError):
        ex.run(config_updates={"seed": 1.5}, options=QUIET)
    assert called == []
    assert events.names == []  # a store must not get a heartbeat or failure of an unknown run


def test_a_bad_seed_on_the_script_command_line_is_one_error_line(tmp_path: Path) -> None:
    script = tmp_path / "exp_seed.py"
    script.write_text(
        textwrap.dedent(
            """
            from expkit import Experiment

            ex = Experiment("seed_cli")

            @ex.automain
            def main():
                print("main ran")
            """
        )
    )
    proc = run_script(script, "with", "seed=1.5", cwd=tmp_path)
    assert proc.returncode == 1
    assert "main ran" not in proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == ["ERROR: the config entry 'seed' must be an integer, not 1.5"]


@pytest.mark.parametrize("bad", [-1, 2**32, 10**40])
def test_a_seed_out_of_range_is_a_clear_error_before_the_run(bad: int) -> None:
    # numpy's global generator takes seeds in [0, 2**32 - 1] only: refused with or without it.
    ex = Experiment("bad_seed", plugin_manager=create_plugin_manager())
    called = _main_that_notes_calls(ex)
    events = Events()
    ex.observers.append(events)
    with pytest.raises(ConfigError) as info:
        ex.run(config_updates={"seed": bad}, options=QUIET)
    assert str(info.value) == (
        f"the config entry 'seed' must be between 0 and 4294967295 (2**32 - 1), not {bad}"
    )
    assert called == [] and events.names == []


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_the_seeds_at_the_ends_of_the_range_seed_numpy(ex: Experiment, seed: int) -> None:
    assert _result(ex, seed=seed)["numpy"] == _result(ex, seed=seed)["numpy"]


EXP_SEED = """    import numpy

    def exp_seed(seed):
        print("main ran with", seed)
"""


@pytest.mark.parametrize("args", [["--seed=-1"], ["--seed", "4294967296"], ["-o", "seed=-1"]])
def test_a_seed_out_of_range_on_the_command_line_is_exit_code_4(
    tmp_path: Path, args: list[str]
) -> None:
    project = write_project(tmp_path, {"exp_seed.py": EXP_SEED})
    done = run_expkit("run", "exp_seed.py", *args, cwd=project)
    assert done.returncode == 4, done.stdout + done.stderr
    bad = args[-1].rpartition("=")[2]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("exp_seed.py::")]
    assert line.startswith("exp_seed.py::exp_seed  ERROR  ")
    assert line.endswith(
        f"s  the config entry 'seed' must be between 0 and 4294967295 (2**32 - 1), not {bad}"
    )
    assert "main ran" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (project / "runs").exists()


def test_a_seed_out_of_range_on_the_script_command_line_is_one_error_line(tmp_path: Path) -> None:
    script = tmp_path / "exp_seed.py"
    script.write_text(
        "import numpy\nfrom expkit import Experiment\n\nex = Experiment('seed_cli')\n\n"
        "@ex.automain\ndef main():\n    print('main ran')\n"
    )
    proc = run_script(script, "with", "seed=-1", cwd=tmp_path)
    assert proc.returncode == 1  # a script's errors exit with 1, as Sacred's do
    assert "main ran" not in proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == [
        "ERROR: the config entry 'seed' must be between 0 and 4294967295 (2**32 - 1), not -1"
    ]


# --- seeds never depend on where the files lie -------------------------------------------

MODULE_DRAWS = """\
    import expkit


    @expkit.fixture
    def data(_seed, _rnd):
        return [_seed, float(_rnd.random())]


    def exp_draws(data, _seed, _rnd):
        return {"fixture": data, "experiment": [_seed, float(_rnd.random())]}
"""


def test_module_experiment_draws_do_not_depend_on_folder_or_cwd(tmp_path: Path) -> None:
    # The same file, run with the same seed from two folders and two working directories.
    first = write_project(tmp_path / "one", {"studies/cv/exp_draws.py": MODULE_DRAWS})
    write_project(tmp_path / "two", {"exp_draws.py": MODULE_DRAWS}, pyproject=None)
    results = []
    for cwd, target, store in (
        (first, "studies/cv/exp_draws.py", tmp_path / "store-one"),
        (tmp_path, "two/exp_draws.py", tmp_path / "store-two"),
    ):
        done = run_expkit("run", target, "--seed", "5", "--store", str(store), cwd=cwd)
        assert done.returncode == 0, done.stdout + done.stderr
        results.append(only_run(store))
    assert results[0]["experiment"]["name"] != results[1]["experiment"]["name"]
    assert results[0]["result"] == results[1]["result"]
    fixture_seed, experiment_seed = (results[0]["result"][k][0] for k in ("fixture", "experiment"))
    assert fixture_seed != experiment_seed  # each function still has a stream of its own


SCRIPT_DRAWS = """\
    import sys

    from expkit import Experiment

    ex = Experiment()


    @ex.capture
    def draw(_seed, _rnd):
        return [_seed, float(_rnd.random())]


    @ex.automain
    def main():
        return [draw(), draw()]
"""


def test_script_draws_do_not_depend_on_folder_or_cwd(tmp_path: Path) -> None:
    write_project(tmp_path / "a/b", {"exp_s.py": SCRIPT_DRAWS}, pyproject=None)
    write_project(tmp_path / "c", {"exp_s.py": SCRIPT_DRAWS}, pyproject=None)
    results = []
    for cwd, script in ((tmp_path, "a/b/exp_s.py"), (tmp_path / "c", "exp_s.py")):
        store = cwd / "store"
        proc = run_script(script, "with", "seed=11", "-F", str(store), cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        results.append(only_run(store)["result"])
    assert results[0] == results[1]
