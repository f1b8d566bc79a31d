"""Injection as a user sees it: what captured functions receive, and the decorators making them."""

# Config scopes are functions whose locals are the point: they are never "unused".
# ruff: noqa: F841

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import run_script

from expkit import Experiment, Ingredient, MissingConfigError, Run, UsageError
from expkit.observers import RunObserver
from expkit.pluginmanager import create_plugin_manager, hookimpl


class Recorder(RunObserver):
    """Remembers the names of the events it received."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def queued_event(self, **kwargs: Any) -> None:
        self.events.append("queued")

    def started_event(self, **kwargs: Any) -> None:
        self.events.append("started")

    def heartbeat_event(self, **kwargs: Any) -> None:
        self.events.append("heartbeat")

    def completed_event(self, **kwargs: Any) -> None:
        self.events.append("completed")

    def interrupted_event(self, **kwargs: Any) -> None:
        self.events.append("interrupted")

    def failed_event(self, **kwargs: Any) -> None:
        self.events.append("failed")


class HookRecorder:
    """A plugin that remembers which run hooks fired and the statuses it saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    @hookimpl
    def expkit_run_queued(self, run: Run) -> None:
        self.calls.append(("queued", run.status))

    @hookimpl
    def expkit_run_started(self, run: Run) -> None:
        self.calls.append(("started", run.status))

    @hookimpl
    def expkit_run_completed(self, run: Run) -> None:
        self.calls.append(("completed", run.status))

    @hookimpl
    def expkit_run_failed(self, run: Run) -> None:
        self.calls.append(("failed", run.status))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message.strip(), message
    return message


# --- injection by name and precedence


def precedence_experiment() -> Experiment:
    ex = Experiment("precedence")

    @ex.config
    def cfg():
        a = 1
        b = 2

    @ex.capture
    def f(a, b, c=3, d="default"):
        return a, b, c, d

    @ex.main
    def main():
        return {
            "config": f(),
            "positional": f(10),
            "keyword": f(b=20),
            "both": f(10, 20, 30),
            "default_over_nothing": f(d="given"),
        }

    return ex


def test_config_entries_fill_parameters_by_name() -> None:
    result = precedence_experiment().run().result
    assert result["config"] == (1, 2, 3, "default")


def test_explicit_arguments_win_over_config() -> None:
    result = precedence_experiment().run().result
    assert result["positional"] == (10, 2, 3, "default")
    assert result["keyword"] == (1, 20, 3, "default")
    assert result["both"] == (10, 20, 30, "default")
    assert result["default_over_nothing"] == (1, 2, 3, "given")


def test_config_wins_over_defaults() -> None:
    ex = precedence_experiment()
    run = ex.run(config_updates={"c": 33})
    assert run.result["config"] == (1, 2, 33, "default")
    assert run.result["both"] == (10, 20, 30, "default")


def test_updates_reach_the_function() -> None:
    result = precedence_experiment().run(config_updates={"a": 5}).result
    assert result["config"] == (5, 2, 3, "default")


def test_keyword_only_parameters_are_filled() -> None:
    ex = Experiment("kwonly")

    @ex.config
    def cfg():
        a = 1

    @ex.main
    def main(*, a, z=9):
        return a, z

    assert ex.run().result == (1, 9)


def test_ingredient_function_sees_its_own_entries_and_its_sub_ingredients() -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        path = "iris.csv"

    model = Ingredient("model", ingredients=[data])

    @model.config
    def model_cfg():
        width = 16

    @model.capture
    def build(width, data, _config):
        return width, data, _config

    ex = Experiment("nested_view", ingredients=[model])

    @ex.config
    def cfg():
        width = 999

    @ex.main
    def main():
        return build()

    width, seen_data, view = ex.run().result
    assert width == 16
    assert seen_data == {"path": "iris.csv"}
    assert view["width"] == 16


# --- special names


def test_config_run_and_log_are_injected(caplog: pytest.LogCaptureFixture) -> None:
    ex = Experiment("specials")

    @ex.config
    def cfg():
        a = 1
        sub = {"k": 2}

    @ex.main
    def main(_config, _run, _log):
        _log.info("hello from main")
        return _config, _run, _log

    with caplog.at_level(logging.INFO):
        run = ex.run()
    view, injected_run, log = run.result
    assert {k: v for k, v in view.items() if k != "seed"} == {"a": 1, "sub": {"k": 2}}
    assert view["seed"] == run.config["seed"]
    assert injected_run is run
    assert isinstance(log, logging.Logger)
    assert log.name.split(".")[-1] == "main"
    assert any(r.getMessage() == "hello from main" and r.name == log.name for r in caplog.records)


def test_ingredient_log_and_config_belong_to_the_ingredient() -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        path = "iris.csv"

    @data.capture
    def load(_config, _log):
        return _config, _log.name

    ex = Experiment("ingredient_specials", ingredients=[data])

    @ex.main
    def main():
        return load()

    view, log_name = ex.run().result
    assert view == {"path": "iris.csv"}
    assert log_name.split(".")[-2:] == ["data", "load"]


def seeded_experiment() -> Experiment:
    ex = Experiment("seeded")

    @ex.capture
    def draw(_seed, _rnd):
        return _seed, float(_rnd.random())

    @ex.main
    def main(_seed):
        return [_seed, draw(), draw()]

    return ex


def test_seed_and_rnd_are_new_on_every_call() -> None:
    main_seed, (seed1, x1), (seed2, x2) = seeded_experiment().run().result
    for seed in (main_seed, seed1, seed2):
        assert isinstance(seed, int) and 1 <= seed <= 10**9
    assert seed1 != seed2
    assert x1 != x2


def test_rnd_is_a_numpy_generator() -> None:
    ex = Experiment("rnd_kind")

    @ex.main
    def main(_rnd):
        return _rnd

    assert isinstance(ex.run().result, np.random.Generator)


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    ex = seeded_experiment()
    first = ex.run(config_updates={"seed": 123}).result
    again = ex.run(config_updates={"seed": 123}).result
    other = ex.run(config_updates={"seed": 124}).result
    assert first == again
    assert first != other


def test_explicit_special_arguments_win() -> None:
    ex = Experiment("explicit_specials")

    @ex.capture
    def draw(_seed, _config):
        return _seed, _config

    @ex.main
    def main():
        return draw(_seed=5, _config={"mine": True})

    assert ex.run().result == (5, {"mine": True})


# --- a name that resolves to nothing


@pytest.fixture
def hooks() -> HookRecorder:
    return HookRecorder()


def typo_experiment(hooks: HookRecorder, observer: Recorder) -> Experiment:
    ex = Experiment("typo", plugin_manager=create_plugin_manager(plugins=[hooks]))
    ex.observers.append(observer)

    @ex.config
    def cfg():
        C = 1.0
        gamma = 0.7

    return ex


def test_unknown_parameter_fails_before_the_run_starts(hooks: HookRecorder) -> None:
    observer = Recorder()
    ex = typo_experiment(hooks, observer)
    called = []

    @ex.main
    def train(C, gama):
        called.append(True)

    with pytest.raises(MissingConfigError) as exc:
        ex.run()
    message = one_line(exc)
    assert "train" in message
    assert "'gama'" in message
    assert "did you mean 'gamma'?" in message
    assert called == []
    assert observer.events == []
    assert hooks.calls == []
    assert ex.current_run is None


def test_unknown_parameter_of_a_pre_run_hook_fails_before_the_run(hooks: HookRecorder) -> None:
    observer = Recorder()
    ex = typo_experiment(hooks, observer)

    @ex.pre_run_hook
    def prepare(gamm):
        pass

    @ex.main
    def main(C):
        return C

    with pytest.raises(MissingConfigError) as exc:
        ex.run()
    message = one_line(exc)
    assert "prepare" in message
    assert "'gamm'" in message
    assert "did you mean 'gamma'?" in message
    assert observer.events == []
    assert hooks.calls == []


def test_the_same_run_works_once_the_name_exists(hooks: HookRecorder) -> None:
    observer = Recorder()
    ex = typo_experiment(hooks, observer)

    @ex.main
    def train(C, gama):
        return C, gama

    run = ex.run(config_updates={"gama": 0.1})
    assert run.result == (1.0, 0.1)
    assert observer.events[0] == "started"
    assert observer.events[-1] == "completed"
    assert hooks.calls[0] == ("started", "RUNNING")


def test_unknown_parameter_without_near_miss_has_no_suggestion(hooks: HookRecorder) -> None:
    ex = typo_experiment(hooks, Recorder())

    @ex.main
    def main(zzz_unrelated):
        pass

    with pytest.raises(MissingConfigError) as exc:
        ex.run()
    message = one_line(exc)
    assert "'zzz_unrelated'" in message
    assert "did you mean" not in message


def test_helper_called_without_its_value_fails_the_run_naming_it() -> None:
    ex = Experiment("helper_missing")
    observer = Recorder()
    ex.observers.append(observer)

    @ex.config
    def cfg():
        gamma = 0.7

    @ex.capture
    def helper(gama):
        return gama

    @ex.main
    def main():
        return helper(gama=1), helper()

    with pytest.raises(MissingConfigError) as exc:
        ex.run()
    assert "helper" in str(exc.value)
    assert "did you mean 'gamma'?" in str(exc.value)
    assert observer.events[-1] == "failed"


def test_script_reports_an_unknown_parameter_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "exp_typo.py"
    script.write_text(
        textwrap.dedent(
            """
            from expkit import Experiment

            ex = Experiment("typo")

            @ex.config
            def cfg():
                gamma = 0.7

            @ex.automain
            def train(gama):
                print("MAIN RAN")
            """
        )
    )
    proc = run_script(script, cwd=tmp_path)
    assert proc.returncode == 1
    assert "MAIN RAN" not in proc.stdout
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "gama" in line]
    assert len(error_lines) == 1
    assert "train" in error_lines[0]
    assert "did you mean 'gamma'?" in error_lines[0]


# --- outside a run


def test_captured_function_is_callable_outside_and_after_a_run() -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        n = 10

    @data.capture
    def load(n, scale=2):
        return n * scale

    ex = Experiment("outside", ingredients=[data])

    @ex.config
    def cfg():
        a = 1

    @ex.capture
    def f(a, b=5):
        return a + b

    @ex.main
    def main(a):
        return f(), load()

    assert f(1, 2) == 3
    assert f(a=10) == 15
    assert load(3) == 6
    assert ex.run().result == (6, 20)
    assert f(100) == 105
    assert load(n=1, scale=1) == 1


def test_main_is_an_ordinary_function_outside_a_run() -> None:
    ex = Experiment("plain_main")

    @ex.config
    def cfg():
        x = 2

    @ex.main
    def main(x, y=3):
        """Multiply."""
        return x * y

    assert main(4) == 12
    assert main.__name__ == "main"
    assert main.__doc__ == "Multiply."
    assert ex.run().result == 6


# --- prefix


def prefix_experiment() -> Experiment:
    ex = Experiment("prefixed")

    @ex.config
    def cfg():
        lr = 0.1
        optimizer = {"name": "adam", "betas": {"b1": 0.9, "b2": 0.999}}

    @ex.capture(prefix="optimizer")
    def make(name, betas, _config):
        return name, betas, _config

    @ex.capture(prefix="optimizer.betas")
    def betas(b1, b2):
        return b1, b2

    @ex.capture(prefix="optimizer")
    def wants_lr(lr):
        return lr

    @ex.capture(prefix="nowhere")
    def empty(_config):
        return _config

    @ex.main
    def main():
        out = {"make": make(), "betas": betas(), "empty": empty(), "explicit_lr": wants_lr(1.0)}
        try:
            wants_lr()
        except MissingConfigError as exc:
            out["lr_error"] = str(exc)
        return out

    return ex


def test_prefix_restricts_a_function_to_a_subtree() -> None:
    result = prefix_experiment().run().result
    name, seen_betas, view = result["make"]
    assert name == "adam"
    assert seen_betas == {"b1": 0.9, "b2": 0.999}
    assert view == {"name": "adam", "betas": {"b1": 0.9, "b2": 0.999}}
    assert result["betas"] == (0.9, 0.999)


def test_prefix_hides_entries_outside_the_subtree() -> None:
    result = prefix_experiment().run().result
    assert result["explicit_lr"] == 1.0
    assert "wants_lr" in result["lr_error"]
    assert "'lr'" in result["lr_error"]


def test_missing_prefix_gives_an_empty_config() -> None:
    assert prefix_experiment().run().result["empty"] == {}


def test_prefix_follows_updates() -> None:
    result = prefix_experiment().run(config_updates={"optimizer.betas.b1": 0.5}).result
    assert result["betas"] == (0.5, 0.999)


# --- mutable values


def test_mutating_a_received_value_changes_neither_config_nor_next_call() -> None:
    ex = Experiment("mutable")

    @ex.config
    def cfg():
        layers = [64, 64]
        opt = {"lr": 0.1, "tags": ["a"]}

    @ex.capture
    def grow(layers, opt, _config):
        received = (list(layers), json.loads(json.dumps(opt)))
        layers.append(1)
        opt["lr"] = 99
        opt["tags"].append("b")
        _config["layers"] = "gone"
        return received

    @ex.main
    def main(layers):
        layers.append(32)
        return grow(), grow()

    run = ex.run()
    first, second = run.result
    assert first == second == ([64, 64], {"lr": 0.1, "tags": ["a"]})
    assert run.config["layers"] == [64, 64]
    assert run.config["opt"] == {"lr": 0.1, "tags": ["a"]}


# --- decorators


def test_capturing_twice_is_a_no_op() -> None:
    ex = Experiment("twice")

    def f(a):
        return a

    once = ex.capture(f)
    twice = ex.capture(once)
    assert twice is once
    assert ex.captured_functions.count(once) == 1


def test_command_runs_with_updates_and_returns_the_run() -> None:
    ex = Experiment("commands")

    @ex.config
    def cfg():
        gamma = 0.7

    @ex.command
    def show(gamma):
        """Show gamma."""
        return gamma

    @ex.main
    def main():
        return "main"

    run = ex.run_command("show", config_updates={"gamma": 7})
    assert isinstance(run, Run)
    assert run.result == 7
    assert run.status == "COMPLETED"
    assert ex.run().result == "main"


def test_unobserved_command_sends_no_events() -> None:
    ex = Experiment("unobserved")
    observer = Recorder()
    ex.observers.append(observer)

    @ex.command(unobserved=True)
    def peek():
        return "peeked"

    @ex.command
    def observed():
        return "observed"

    assert ex.run_command("peek").result == "peeked"
    assert observer.events == []
    assert ex.run_command("observed").result == "observed"
    assert observer.events[0] == "started"
    assert observer.events[-1] == "completed"


def test_command_with_prefix() -> None:
    ex = Experiment("command_prefix")

    @ex.config
    def cfg():
        db = {"host": "localhost", "port": 27017}

    @ex.command(prefix="db")
    def address(host, port):
        return f"{host}:{port}"

    assert ex.run_command("address", config_updates={"db.port": 1}).result == "localhost:1"


def test_pre_and_post_run_hooks_run_in_order_with_injection() -> None:
    data = Ingredient("data")
    calls: list[Any] = []

    @data.config
    def data_cfg():
        n = 3

    @data.pre_run_hook
    def data_ready(n):
        calls.append(("data pre", n))

    ex = Experiment("hooks", ingredients=[data])

    @ex.config
    def cfg():
        a = 1

    @ex.pre_run_hook
    def prepare(a, _run):
        calls.append(("pre", a, _run.status))

    @ex.post_run_hook(prefix="data")
    def report(n):
        calls.append(("post", n))

    @ex.main
    def main(a):
        calls.append(("main", a))
        return a

    ex.run(config_updates={"a": 2})
    assert calls == [("data pre", 3), ("pre", 2, "RUNNING"), ("main", 2), ("post", 3)]


def test_post_run_hook_does_not_run_when_main_fails() -> None:
    ex = Experiment("failing")
    calls: list[str] = []

    @ex.post_run_hook
    def report():
        calls.append("post")

    @ex.main
    def main():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ex.run()
    assert calls == []


def test_option_hook_sees_and_changes_the_options() -> None:
    ex = Experiment("options")
    seen: dict = {}

    @ex.option_hook
    def tweak(options):
        seen.update(options)
        options["--comment"] = "set by the hook"

    @ex.main
    def main():
        return 1

    run = ex.run(options={"--name": "renamed"})
    assert seen["--name"] == "renamed"
    assert run.meta_info["comment"] == "set by the hook"


def test_option_hook_needs_an_options_parameter() -> None:
    ex = Experiment("bad_option_hook")
    with pytest.raises(KeyError, match="options"):

        @ex.option_hook
        def tweak(opts):
            pass


def test_no_main_function_is_a_clear_error() -> None:
    ex = Experiment("no_main")
    with pytest.raises(UsageError) as exc:
        ex.run()
    assert "main" in one_line(exc)


AUTOMAIN = textwrap.dedent(
    """
    from expkit import Experiment

    ex = Experiment("auto")

    @ex.config
    def cfg():
        a = 1

    @ex.automain
    def main(a):
        print("MAIN", a)
        return a
    """
)


def test_automain_runs_the_command_line_only_as_a_script(tmp_path: Path) -> None:
    (tmp_path / "exp_auto.py").write_text(AUTOMAIN)
    proc = run_script("exp_auto.py", "with", "a=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "MAIN 4" in proc.stdout

    importer = subprocess.run(
        [sys.executable, "-c", "import exp_auto; print('IMPORTED', exp_auto.ex.default_command)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert importer.returncode == 0, importer.stderr
    assert "IMPORTED main" in importer.stdout
    assert "MAIN" not in importer.stdout.replace("IMPORTED main", "")
