"""Config semantics as a user sees them: scopes, dicts, files, named configs, ingredients, hooks.

Experiments are built inside the tests (this module is a file, so config scopes
have their source); configurations are resolved with ``resolve_config`` where no
run is needed and with ``ex.run`` where the value a function receives matters.
"""

# Config scopes are functions whose locals are the point: they are never "unused".
# ruff: noqa: F841

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_lines, only_run, run_expkit, write_project

from expkit import ConfigAddedError, ConfigError, Experiment, ExpkitError, Ingredient
from expkit.configuration import ConfigScope
from expkit.errors import NamedConfigNotFoundError
from expkit.observers import RunObserver
from expkit.resolve import resolve_config


class Recorder(RunObserver):
    """Remembers which events it received and the config it was started with."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.config: dict | None = None

    def queued_event(self, **kwargs: Any) -> None:
        self.events.append("queued")

    def started_event(self, **kwargs: Any) -> None:
        self.events.append("started")
        self.config = kwargs["config"]

    def completed_event(self, **kwargs: Any) -> None:
        self.events.append("completed")

    def failed_event(self, **kwargs: Any) -> None:
        self.events.append("failed")


def entries(ex: Experiment, *named: str, **updates: Any) -> dict:
    """The resolved config without the generated seed."""
    config = dict(resolve_config(ex, updates, named))
    config.pop("seed", None)
    return config


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message.strip(), message
    return message


# --- config scopes: what becomes an entry ------------------------------------------


def test_locals_become_entries_and_helpers_are_not_config() -> None:
    ex = Experiment("scope")

    @ex.config
    def cfg():
        import math
        from os import path as osp

        def helper(x):
            return 2 * x

        class Shape:
            pass

        square = lambda x: x * x  # noqa: E731
        n = helper(3)
        area = square(4)
        root = math.sqrt(16)
        name = osp.basename("/data/iris.csv")
        layers = [64, 64]
        opts = {"momentum": 0.9, "nesterov": True}
        nothing = None

    assert entries(ex) == {
        "n": 6,
        "area": 16,
        "root": 4.0,
        "name": "iris.csv",
        "layers": [64, 64],
        "opts": {"momentum": 0.9, "nesterov": True},
        "nothing": None,
    }


def test_numpy_scalars_become_python_numbers() -> None:
    ex = Experiment("numpy_scalars")

    @ex.config
    def cfg():
        rate = np.float64(0.25)
        count = np.int64(7)

    config = entries(ex)
    assert config == {"rate": 0.25, "count": 7}
    assert type(config["rate"]) is float
    assert type(config["count"]) is int


def test_non_json_value_in_a_scope_is_an_error_naming_the_entry() -> None:
    ex = Experiment("bad_value")

    @ex.config
    def cfg():
        fine = 1
        handle = object()

    with pytest.raises(ConfigError) as exc:
        resolve_config(ex)
    message = one_line(exc)
    assert "'handle'" in message
    assert "cfg" in message
    assert "fine" not in message


def test_non_json_value_deep_in_a_dict_is_named_by_its_path() -> None:
    ex = Experiment("bad_nested")

    @ex.config
    def cfg():
        opts = {"inner": {"tags": {"a", "b"}}}

    with pytest.raises(ConfigError, match=r"'opts\.inner\.tags'"):
        resolve_config(ex)


def test_numpy_array_in_a_scope_suggests_tolist() -> None:
    ex = Experiment("bad_array")

    @ex.config
    def cfg():
        weights = np.ones(3)

    with pytest.raises(ConfigError, match=r"'weights'.*tolist"):
        resolve_config(ex)


def test_non_json_update_is_an_error_naming_the_entry() -> None:
    ex = Experiment("bad_update")

    @ex.config
    def cfg():
        a = 1

    @ex.main
    def main(a):
        return a

    observer = Recorder()
    ex.observers.append(observer)
    with pytest.raises(ConfigError) as exc:
        ex.run(config_updates={"a": object()})
    assert "'a'" in one_line(exc)
    assert observer.events == []


@pytest.mark.parametrize(
    ("updates", "key"), [({1: 2}, 1), ({"C": {1: 2}}, 1), ({"C.d": {(1, 2): 3}}, (1, 2))]
)
def test_an_update_with_a_key_that_is_no_string_is_refused(updates: dict, key: Any) -> None:
    ex = Experiment("int_key")

    @ex.config
    def cfg():
        C = 1

    @ex.main
    def main(C):
        return C

    observer = Recorder()
    ex.observers.append(observer)
    with pytest.raises(ConfigError) as exc:
        ex.run(config_updates=updates)
    assert one_line(exc) == f"config key {key!r} in the config updates must be a string"
    assert observer.events == []


def test_invalid_keys_are_refused() -> None:
    ex = Experiment("bad_key")
    with pytest.raises(ConfigError, match=r"'a=b'"):
        ex.add_config({"ok": {"a=b": 1}})
    with pytest.raises(ConfigError, match=r"'\$where'"):
        ex.add_config({"query": {"$where": 1}})


# --- docs --------------------------------------------------------------------------


def test_comments_and_docstring_become_docs() -> None:
    ex = Experiment("documented")

    @ex.config
    def cfg():
        """Settings of the demo."""
        lr = 0.1  # the learning rate
        # hidden units per layer,
        # from input to output
        layers = [8, 4]
        epochs = 3
        workers = 2  # pylint: disable=invalid-name

    @ex.main
    def main():
        pass

    run = ex.run()
    docs = run.config_modifications.docs
    assert docs["lr"] == "the learning rate"
    assert docs["layers"] == "hidden units per layer, from input to output"
    assert "epochs" not in docs
    assert "workers" not in docs
    assert run.config["__doc__"] == "Settings of the demo."


def test_a_comment_documents_every_name_an_assignment_binds() -> None:
    ex = Experiment("unpacked")

    @ex.config
    def cfg():
        # the size and its flag
        b, c = 2.0, True
        lo, (mid, *rest) = 0, (1, 2, 3)  # bounds
        d = dd = 4  # twice

    @ex.main
    def main():
        pass

    docs = ex.run().config_modifications.docs
    assert docs["b"] == docs["c"] == "the size and its flag"
    assert docs["lo"] == docs["mid"] == docs["rest"] == "bounds"
    assert docs["d"] == docs["dd"] == "twice"


def test_docs_of_an_ingredient_are_under_its_path() -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        path = "iris.csv"  # where the table is

    ex = Experiment("documented_ingredient", ingredients=[data])
    assert resolve_config(ex).docs["data.path"] == "where the table is"


# --- updates are fixed before the scope runs ----------------------------------------


def derived_experiment() -> Experiment:
    ex = Experiment("derived")

    @ex.config
    def cfg():
        a = 10
        b = 3 * a
        big = a > 20
        opt = {"lr": 0.1, "momentum": 0.9}
        lr2 = opt["lr"] * 2

    @ex.main
    def main(a, b, big, opt, lr2):
        return {"a": a, "b": b, "big": big, "opt": opt, "lr2": lr2}

    return ex


def test_derived_entries_follow_an_update() -> None:
    run = derived_experiment().run(config_updates={"a": 23})
    assert run.result["a"] == 23
    assert run.result["b"] == 69
    assert run.result["big"] is True
    assert run.config["b"] == 69


def test_scope_cannot_overwrite_a_fixed_entry() -> None:
    ex = Experiment("fixed")

    @ex.config
    def cfg():
        a = 1
        a = a + 1
        a += 5
        before = a

    assert entries(ex) == {"a": 7, "before": 7}
    assert entries(ex, a=100) == {"a": 100, "before": 100}


def test_dotted_update_changes_one_key_of_a_dict() -> None:
    run = derived_experiment().run(config_updates={"opt.lr": 0.5})
    assert run.result["opt"] == {"lr": 0.5, "momentum": 0.9}
    assert run.result["lr2"] == 1.0


def test_dotted_and_nested_updates_are_the_same() -> None:
    ex = derived_experiment()
    dotted = entries(ex, **{"opt.lr": 0.5})
    nested = entries(ex, opt={"lr": 0.5})
    assert dotted == nested
    assert dotted["opt"] == {"lr": 0.5, "momentum": 0.9}


# --- several scopes, dicts and files -------------------------------------------------


def test_later_scope_reads_and_overwrites_earlier_entries() -> None:
    ex = Experiment("chain")

    @ex.config
    def first():
        a = 1
        opt = {"lr": 0.1, "momentum": 0.9}
        c = 7

    @ex.config
    def second(a):
        a = a + 10
        opt = {"lr": 0.5}

    @ex.config
    def third():
        c = 8

    assert entries(ex) == {"a": 11, "opt": {"lr": 0.5, "momentum": 0.9}, "c": 8}


def _changes_in_place() -> Experiment:
    ex = Experiment("in_place")

    @ex.config
    def base():
        opts = {"lr": 0.1, "momentum": 0.9}
        layers = [1, 2]

    @ex.config
    def tune(opts, layers):
        opts["lr"] = 0.01
        opts["nesterov"] = True
        layers.append(3)

    @ex.named_config
    def heavy():
        opts = {"lr": 1, "wd": 0.1}

    @ex.named_config
    def faster(opts):
        opts["lr"] = 2

    return ex


@pytest.mark.parametrize(
    ("updates", "named", "expected"),
    [
        ({}, [], ({"lr": 0.01, "momentum": 0.9, "nesterov": True}, [1, 2, 3])),
        # The update's leaf stays fixed; the scope's change to another leaf is kept.
        (
            {"opts.lr": 5, "opts.x": 1},
            [],
            ({"lr": 5, "momentum": 0.9, "nesterov": True, "x": 1}, [1, 2, 3]),
        ),
        ({"layers": [9]}, [], ({"lr": 0.01, "momentum": 0.9, "nesterov": True}, [9])),
        (
            {},
            ["heavy", "faster"],
            ({"lr": 2, "momentum": 0.9, "wd": 0.1, "nesterov": True}, [1, 2, 3]),
        ),
    ],
    ids=["scopes", "updates", "fixed-list", "named-configs"],
)
def test_an_entry_a_later_scope_changes_in_place_is_changed_as_in_sacred(
    updates: dict, named: list, expected: tuple
) -> None:
    # Sacred 0.8.7 gives these same configs; the change was lost before.
    config = resolve_config(_changes_in_place(), updates, named)
    assert (config["opts"], config["layers"]) == expected


def test_later_scope_derives_from_an_updated_earlier_entry() -> None:
    ex = Experiment("chain_update")

    @ex.config
    def first():
        batch = 32

    @ex.config
    def second(batch):
        eval_batch = 4 * batch

    assert entries(ex, batch=8) == {"batch": 8, "eval_batch": 32}


def test_add_config_dict_and_kwargs_apply_in_declaration_order() -> None:
    ex = Experiment("dicts")
    ex.add_config({"optimizer": {"name": "adam", "betas": (0.9, 0.999)}, "n": 4})
    ex.add_config(batch_size=32, shuffle=True)
    ex.add_config({"optimizer": {"name": "sgd"}})

    @ex.config
    def more(n, batch_size):
        square = n * n
        eval_batch_size = 4 * batch_size

    assert entries(ex) == {
        "optimizer": {"name": "sgd", "betas": (0.9, 0.999)},
        "n": 4,
        "batch_size": 32,
        "shuffle": True,
        "square": 16,
        "eval_batch_size": 128,
    }


def test_add_config_dict_overrides_an_earlier_scope() -> None:
    ex = Experiment("dict_after_scope")

    @ex.config
    def cfg():
        a = 1
        b = 2

    ex.add_config(a=5)
    assert entries(ex) == {"a": 5, "b": 2}


def test_add_config_with_dotted_keys_nests_them() -> None:
    ex = Experiment("dotted_dict")
    ex.add_config({"model.width": 8, "model.depth": 2})
    assert entries(ex) == {"model": {"width": 8, "depth": 2}}


@pytest.fixture
def config_files(tmp_path: Path) -> dict[str, Path]:
    """The same settings as JSON, TOML and YAML files."""
    files = {
        "json": tmp_path / "cfg.json",
        "toml": tmp_path / "cfg.toml",
        "yaml": tmp_path / "cfg.yaml",
    }
    files["json"].write_text('{"lr": 0.01, "optimizer": {"name": "sgd"}}')
    files["toml"].write_text('lr = 0.01\n\n[optimizer]\nname = "sgd"\n')
    files["yaml"].write_text("lr: 0.01\noptimizer:\n  name: sgd\n")
    return files


@pytest.mark.parametrize("kind", ["json", "toml", "yaml"])
def test_add_config_reads_a_file(config_files: dict[str, Path], kind: str) -> None:
    ex = Experiment("from_file")

    @ex.config
    def cfg():
        optimizer = {"name": "adam", "eps": 1e-8}

    ex.add_config(str(config_files[kind]))

    @ex.config
    def derived(lr):
        lr10 = lr * 10

    assert entries(ex) == {
        "optimizer": {"name": "sgd", "eps": 1e-8},
        "lr": 0.01,
        "lr10": 0.1,
    }


def test_add_config_accepts_a_path_object(config_files: dict[str, Path]) -> None:
    ex = Experiment("from_path")
    ex.add_config(config_files["toml"])
    assert entries(ex) == {"lr": 0.01, "optimizer": {"name": "sgd"}}


@pytest.mark.parametrize("kind", ["json", "toml", "yaml"])
def test_config_file_is_a_named_update(config_files: dict[str, Path], kind: str) -> None:
    ex = Experiment("file_named")

    @ex.config
    def cfg():
        lr = 0.1
        steps = 100
        optimizer = {"name": "adam", "eps": 1e-8}
        warm = lr * steps

    @ex.main
    def main(lr, optimizer, warm):
        return lr, optimizer, warm

    run = ex.run(named_configs=[str(config_files[kind])])
    assert run.result == (0.01, {"name": "sgd", "eps": 1e-8}, 1.0)
    assert run.config_modifications.modified >= {"lr", "optimizer.name"}


def test_plain_update_wins_over_a_config_file(config_files: dict[str, Path]) -> None:
    ex = Experiment("file_and_update")

    @ex.config
    def cfg():
        lr = 0.1
        optimizer = {"name": "adam"}

    assert entries(ex, str(config_files["json"]), lr=0.5) == {
        "lr": 0.5,
        "optimizer": {"name": "sgd"},
    }


def test_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    ex = Experiment("missing_file")
    missing = tmp_path / "nowhere.json"
    with pytest.raises(OSError, match=r"nowhere\.json"):
        ex.add_config(str(missing))


def test_unsupported_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.ini"
    path.write_text("[a]\nb = 1\n")
    ex = Experiment("ini_file")
    with pytest.raises(ExpkitError) as exc:
        ex.add_config(str(path))
    message = one_line(exc)
    assert "settings.ini" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("broken.json", '{"lr": 0.1,,}'),
        ("broken.toml", "lr = = 0.1\n"),
        ("broken.yaml", "lr: [0.1\n"),
    ],
)
def test_malformed_config_file_is_one_line_naming_it(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    ex = Experiment("broken_file")
    with pytest.raises(ConfigError) as exc:
        ex.add_config(str(path))
    assert name in one_line(exc)


def test_config_file_without_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    ex = Experiment("list_file")
    with pytest.raises(ExpkitError) as exc:
        ex.add_config(str(path))
    assert "list.yaml" in one_line(exc)


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing set yet\n  # indented\n"])
def test_an_empty_yaml_file_is_an_empty_config(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    ex = Experiment("empty_file")

    @ex.config
    def cfg():
        lr = 0.1

    ex.add_config(str(path))
    assert entries(ex) == {"lr": 0.1}
    assert entries(ex, str(path)) == {"lr": 0.1}


def test_a_yaml_file_with_a_non_string_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("C: {1: 2}\n")
    ex = Experiment("int_key_file")
    with pytest.raises(ConfigError) as exc:
        ex.add_config(str(path))
    assert one_line(exc) == f"config key 1 in config file {str(path)!r} must be a string"


@pytest.mark.parametrize(
    ("name", "text", "entry", "value"),
    [
        ("big.json", '{"C": 1e400}', "C", "inf"),
        ("nan.json", '{"C": {"d": [1, NaN]}}', "C.d[1]", "nan"),
        ("inf.yaml", "C: -.inf\n", "C", "-inf"),
        ("nan.toml", "C = nan\n", "C", "nan"),
    ],
)
def test_a_config_file_with_inf_or_nan_is_refused_naming_the_entry(
    tmp_path: Path, name: str, text: str, entry: str, value: str
) -> None:
    # As -o C=1e400 is: JSON has no word for them, and json would write Infinity or NaN.
    path = tmp_path / name
    path.write_text(text)
    ex = Experiment("non_finite_file")
    with pytest.raises(ConfigError) as exc:
        ex.add_config(str(path))
    assert one_line(exc) == (
        f"config entry {entry!r} in config file {str(path)!r} is {value}, which JSON cannot store; "
        "give a finite number (at most 1.8e308 in size)"
    )


# --- add_config / add_named_config forms and their errors -------------------------------


def test_add_config_refuses_both_a_dict_and_keywords() -> None:
    ex = Experiment("both")
    with pytest.raises(ValueError, match="cannot combine keyword config with positional"):
        ex.add_config({"a": 1}, b=2)


def test_add_config_refuses_nothing() -> None:
    ex = Experiment("empty")
    with pytest.raises(ValueError, match="empty config"):
        ex.add_config()
    with pytest.raises(ValueError, match="empty config"):
        ex.add_named_config("nothing")


def test_add_config_refuses_other_types() -> None:
    ex = Experiment("wrong_type")
    with pytest.raises(TypeError, match="int"):
        ex.add_config(42)


def test_add_named_config_forms(config_files: dict[str, Path]) -> None:
    ex = Experiment("named_forms")

    @ex.config
    def cfg():
        lr = 0.1
        optimizer = {"name": "adam"}
        steps = 10

    ex.add_named_config("fast", {"steps": 1})
    ex.add_named_config("slow", steps=1000)
    ex.add_named_config("sgd", str(config_files["yaml"]))
    assert entries(ex)["steps"] == 10
    assert entries(ex, "fast")["steps"] == 1
    assert entries(ex, "slow")["steps"] == 1000
    assert entries(ex, "sgd") == {"lr": 0.01, "optimizer": {"name": "sgd"}, "steps": 10}


def test_duplicate_named_config_is_refused() -> None:
    ex = Experiment("duplicate")

    @ex.named_config
    def fast():
        steps = 1

    with pytest.raises(KeyError, match='"fast" already in use'):
        ex.add_named_config("fast", steps=2)


def test_scope_with_return_is_refused() -> None:
    ex = Experiment("returns")
    with pytest.raises(ConfigError, match="return"):

        @ex.config
        def cfg():
            a = 1
            return a


def test_scope_with_star_args_or_defaults_is_refused() -> None:
    ex = Experiment("star_args")
    with pytest.raises(ConfigError, match="cfg"):

        @ex.config
        def cfg(*args):
            a = 1

    with pytest.raises(ConfigError, match="cfg_default"):

        @ex.config
        def cfg_default(a=1):
            b = a


def test_scope_parameter_naming_nothing_is_an_error_naming_it() -> None:
    ex = Experiment("bad_param")

    @ex.config
    def cfg(unknown):
        a = unknown

    with pytest.raises(ConfigError) as exc:
        resolve_config(ex)
    message = one_line(exc)
    assert "'unknown'" in message
    assert "cfg" in message


# --- named configs -------------------------------------------------------------------


def named_experiment() -> Experiment:
    ex = Experiment("named")

    @ex.config
    def cfg():
        steps = 1000
        layers = [64, 64]
        warmup = steps // 10

    @ex.named_config
    def large():
        """Wider layers and a longer schedule."""
        layers = [256, 256]
        steps = 20000

    @ex.named_config
    def quick():
        steps = 10

    @ex.main
    def main(steps, layers, warmup):
        return steps, layers, warmup

    return ex


def test_named_config_applies_only_when_asked() -> None:
    ex = named_experiment()
    assert entries(ex) == {"steps": 1000, "layers": [64, 64], "warmup": 100}
    assert entries(ex, "large") == {"steps": 20000, "layers": [256, 256], "warmup": 2000}


def test_later_named_config_wins_over_an_earlier_one() -> None:
    ex = named_experiment()
    assert entries(ex, "large", "quick") == {"steps": 10, "layers": [256, 256], "warmup": 1}
    assert entries(ex, "quick", "large") == {"steps": 20000, "layers": [256, 256], "warmup": 2000}


def test_later_named_dict_and_scope_follow_the_same_order() -> None:
    ex = named_experiment()
    ex.add_named_config("tiny", steps=5)
    assert entries(ex, "tiny", "quick")["steps"] == 10
    assert entries(ex, "quick", "tiny")["steps"] == 5


def test_named_config_sees_the_results_of_earlier_ones() -> None:
    ex = named_experiment()

    @ex.named_config
    def double(steps):
        steps = 2 * steps

    assert entries(ex, "large", "double")["steps"] == 40000


def test_plain_updates_win_over_named_configs() -> None:
    run = named_experiment().run(named_configs=["large", "quick"], config_updates={"steps": 50})
    assert run.result == (50, [256, 256], 5)
    assert run.meta_info["named_configs"] == ["large", "quick"]


def test_named_config_sees_the_updates() -> None:
    ex = Experiment("named_sees_updates")

    @ex.config
    def cfg():
        width = 8
        depth = 2

    @ex.named_config
    def deep(width):
        depth = width * 4

    assert entries(ex, "deep", width=3) == {"width": 3, "depth": 12}


def test_unknown_named_config_suggests_a_near_miss() -> None:
    ex = named_experiment()
    with pytest.raises(NamedConfigNotFoundError) as exc:
        resolve_config(ex, {}, ["larg"])
    message = one_line(exc)
    assert message.startswith('Named config not found: "larg". Available config values are:')
    assert "did you mean 'large'?" in message
    assert exc.value.named_config == "larg"
    assert exc.value.available_named_configs == ("large", "quick")


# --- ingredients ----------------------------------------------------------------------


def ingredient_experiment() -> tuple[Experiment, Ingredient, Ingredient]:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        path = "iris.csv"
        n = 10

    @data.named_config
    def small():
        n = 2

    @data.capture
    def load(path, n):
        return path, n

    model = Ingredient("model", ingredients=[data])

    @model.config
    def model_cfg(data):
        width = data["n"] * 2

    @model.capture
    def build(width, data):
        return width, data

    ex = Experiment("with_ingredients", ingredients=[model, data])

    @ex.config
    def cfg(data):
        lr = 0.1
        rows = data["n"]

    @ex.main
    def main(lr, rows):
        return load(), build(), lr, rows

    return ex, data, model


def test_ingredient_config_is_namespaced_by_its_path() -> None:
    ex, _, _ = ingredient_experiment()
    run = ex.run()
    assert run.config["data"] == {"path": "iris.csv", "n": 10}
    assert run.config["model"] == {"width": 20}
    assert "path" not in run.config
    assert run.result == (("iris.csv", 10), (20, {"path": "iris.csv", "n": 10}), 0.1, 10)


def test_dotted_update_reaches_an_ingredient_and_what_reads_it() -> None:
    ex, _, _ = ingredient_experiment()
    run = ex.run(config_updates={"data.n": 4})
    load_result, build_result, _, rows = run.result
    assert load_result == ("iris.csv", 4)
    assert build_result == (8, {"path": "iris.csv", "n": 4})
    assert rows == 4
    assert "data.n" in run.config_modifications.modified


def test_ingredient_named_config_is_prefixed_with_its_path() -> None:
    ex, _, _ = ingredient_experiment()
    config = entries(ex, "data.small")
    assert config["data"]["n"] == 2
    assert config["model"]["width"] == 4


def simple_ingredient_experiment() -> Experiment:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        path = "iris.csv"
        n = 10

    @data.capture
    def load(path, n):
        return path, n

    ex = Experiment("simple_ingredient", ingredients=[data])

    @ex.main
    def main():
        return load()

    return ex


def test_nested_update_reaches_an_ingredient() -> None:
    ex = simple_ingredient_experiment()
    assert ex.run(config_updates={"data": {"path": "other.csv"}}).result == ("other.csv", 10)


def test_scope_reading_an_ingredient_sees_its_whole_updated_config() -> None:
    ex, _, _ = ingredient_experiment()
    run = ex.run(config_updates={"data.path": "other.csv"})
    assert run.config["rows"] == 10
    assert run.config["model"]["width"] == 20
    assert run.result[0] == ("other.csv", 10)


def test_ingredient_scope_cannot_read_an_unrelated_ingredient() -> None:
    other = Ingredient("other")

    @other.config
    def other_cfg():
        x = 1

    reader = Ingredient("reader")

    @reader.config
    def reader_cfg(other):
        y = other["x"]

    ex = Experiment("unrelated", ingredients=[reader, other])
    with pytest.raises(ConfigError, match="'other'"):
        resolve_config(ex)


def test_a_later_scope_may_delete_an_earlier_entry_it_reads() -> None:
    ex = Experiment("deletes")

    @ex.config
    def first():
        tmp = 3

    @ex.config
    def second(tmp):
        b = tmp * 2
        del tmp  # a helper name, as Sacred allows; the earlier scope's entry stays

    assert entries(ex) == {"tmp": 3, "b": 6}


def test_a_scope_that_sets_an_ingredients_entry_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        n = 5

    ex = Experiment("owner", ingredients=[data])

    @ex.config
    def cfg(data):
        data = {"n": 100}  # ignored, as in Sacred: the ingredient's own scopes set data
        k = data["n"]

    with caplog.at_level(logging.WARNING):
        assert entries(ex) == {"data": {"n": 5}, "k": 100}
    assert 'Ignored attempt to set value of "data", because it is an ingredient.' in caplog.text


# --- config hooks ----------------------------------------------------------------------


def test_config_hook_adds_entries_from_the_whole_config() -> None:
    ex = Experiment("hooked")
    seen: dict = {}

    @ex.config
    def cfg():
        lr = 0.1
        steps = 10

    @ex.config_hook
    def scale(config, command_name, logger):
        seen["command"] = command_name
        seen["logger"] = logger
        config["lr"] = "mutating the copy changes nothing"
        return {"total": 0.1 * config["steps"], "steps": 20}

    @ex.main
    def main(lr, steps, total):
        return lr, steps, total

    run = ex.run(config_updates={"steps": 5})
    assert run.result == (0.1, 5, 0.5)
    assert seen["command"] == "main"
    assert isinstance(seen["logger"], logging.Logger)


def test_ingredient_config_hook_updates_its_own_part() -> None:
    data = Ingredient("data")

    @data.config
    def data_cfg():
        n = 3

    @data.config_hook
    def doubled(config, command_name, logger):
        return {"n2": config["data"]["n"] * 2}

    ex = Experiment("ingredient_hook", ingredients=[data])
    assert entries(ex, **{"data.n": 4})["data"] == {"n": 4, "n2": 8}


def test_config_hook_needs_the_exact_signature() -> None:
    ex = Experiment("bad_hook")
    with pytest.raises(ValueError, match=r"\(config, command_name, logger\)"):

        @ex.config_hook
        def hook(config):
            return {}


def test_config_hook_returning_non_json_is_an_error_naming_it() -> None:
    ex = Experiment("bad_hook_value")

    @ex.config_hook
    def opener(config, command_name, logger):
        return {"handle": object()}

    with pytest.raises(ConfigError) as exc:
        resolve_config(ex)
    message = one_line(exc)
    assert "'handle'" in message
    assert "opener" in message


# --- change tracking ---------------------------------------------------------------------


def tracked_experiment() -> Experiment:
    ex = Experiment("tracked")

    @ex.config
    def cfg():
        a = 1
        name = "x"
        ratio = 0.5
        opt = {"lr": 0.1, "momentum": 0.9}
        maybe = None
        pair = (1, 2)

    @ex.main
    def main(a, name, ratio, opt, maybe, pair, extra=0):
        return extra

    return ex


def test_modified_added_and_typechanged_entries_are_tracked() -> None:
    run = tracked_experiment().run(
        config_updates={"a": 23, "name": 5, "opt.lr": 0.2, "extra": 3, "maybe": "set"}
    )
    mods = run.config_modifications
    assert {"a", "opt.lr"} <= mods.modified
    assert mods.added == {"extra"}
    assert mods.typechanged == {"name": (str, int)}
    assert "ratio" not in mods.modified | mods.added | set(mods.typechanged)
    assert "opt.momentum" not in mods.modified
    assert "maybe" not in mods.typechanged
    assert run.result == 3


def test_int_to_float_and_tuple_to_list_are_modifications_not_type_changes() -> None:
    # Unlike Sacred, a number for a number is a new value (gamma=7 for 0.7), not a new type.
    summary = resolve_config(tracked_experiment(), {"a": 2.5, "pair": [3, 4]})
    assert summary.typechanged == {}
    assert {"a", "pair"} <= summary.modified


def test_type_change_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tracked_experiment().run(config_updates={"name": 5})
    assert any(
        "name" in r.getMessage() and "str" in r.getMessage() and "int" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


def test_a_bool_entry_given_a_number_is_warned_about_a_float_given_an_int_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = Experiment("flags")

    @ex.config
    def cfg():
        flag = True
        rate = 0.5

    ex.main(lambda flag, rate: None)
    with caplog.at_level(logging.WARNING):
        ex.run(config_updates={"flag": 1, "rate": 1})
    warned = [r.getMessage() for r in caplog.records if "Changed type" in r.getMessage()]
    assert warned == ['Changed type of config entry "flag" from bool to int']


def test_an_update_equal_to_the_default_is_no_added_entry() -> None:
    # Small ints and short strings are shared objects: the scope's own 0 is the update's 0.
    ex = Experiment("same")

    @ex.config
    def cfg():
        x = 0
        name = "svm"

    summary = resolve_config(ex, {"x": 0, "name": "svm"})
    assert summary.added == set()


def test_an_empty_dict_merged_into_a_dict_is_no_added_entry() -> None:
    ex = Experiment("merged")

    @ex.config
    def cfg():
        d = {"k": 1}

    summary = resolve_config(ex, {"d": {}, "e": {}})
    assert summary["d"] == {"k": 1}
    assert summary.added == {"e"}  # a new empty dict is new


def test_unchanged_run_has_no_modifications() -> None:
    mods = tracked_experiment().run().config_modifications
    assert mods.added == set()
    assert mods.typechanged == {}
    assert mods.modified <= {"seed"}


# --- added entries nobody uses ------------------------------------------------------------


def test_added_entry_no_function_uses_is_an_error() -> None:
    ex = Experiment("typo")

    @ex.config
    def cfg():
        gamma = 0.7

    @ex.main
    def main(gamma):
        return gamma

    observer = Recorder()
    ex.observers.append(observer)
    with pytest.raises(ConfigAddedError) as exc:
        ex.run(config_updates={"gama": 0.5})
    message = one_line(exc)
    assert "'gama'" in message
    assert "did you mean 'gamma'?" in message
    assert observer.events == []
    assert ex.current_run is None


def test_added_entry_is_accepted_when_forced() -> None:
    ex = Experiment("forced")

    @ex.main
    def main():
        return "ran"

    run = ex.run(config_updates={"note": "hello"}, options={"--force": True})
    assert run.status == "COMPLETED"
    assert run.config["note"] == "hello"
    assert "note" in run.config_modifications.added


@pytest.mark.parametrize(
    ("update", "path"),
    [
        ({"_run": 1}, "'_run'"),
        ({"inner": {"_seed": 3}}, "'inner._seed'"),
        ({"_config.a": 2}, "'_config.a'"),
    ],
)
def test_an_update_of_a_name_expkit_passes_itself_is_refused_even_forced(
    update: dict, path: str
) -> None:
    # main would get the run, not 1: the entry would be stored and rerun, yet never used.
    ex = Experiment("special")

    @ex.main
    def main(_run, _seed, _config):
        return "ran"

    observer = Recorder()
    ex.observers.append(observer)
    with pytest.raises(ConfigError) as exc:
        ex.run(config_updates=update, options={"--force": True})
    assert f"the update {path} cannot be made: " in one_line(exc)
    assert observer.events == []


def test_added_entry_a_function_uses_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = Experiment("used_addition")

    @ex.capture
    def helper(threshold=0.5):
        return threshold

    @ex.main
    def main():
        return helper()

    with caplog.at_level(logging.WARNING):
        run = ex.run(config_updates={"threshold": 0.9})
    assert run.result == 0.9
    assert any("threshold" in r.getMessage() for r in caplog.records)


def test_added_key_inside_a_used_dict_is_accepted() -> None:
    ex = Experiment("dict_addition")

    @ex.config
    def cfg():
        opt = {"lr": 0.1}

    @ex.main
    def main(opt):
        return opt

    assert ex.run(config_updates={"opt.momentum": 0.9}).result == {"lr": 0.1, "momentum": 0.9}


def test_added_entry_from_an_ingredient_path_no_one_uses_is_an_error() -> None:
    ex = simple_ingredient_experiment()
    with pytest.raises(ConfigAddedError, match=r"'data\.nn'"):
        ex.run(config_updates={"data.nn": 4})


# --- tuples


def tuple_experiment() -> Experiment:
    ex = Experiment("tuples")

    @ex.config
    def cfg():
        shape = (28, 28)
        nested = {"kernel": (3, 3)}

    @ex.main
    def main(shape, nested):
        return shape, nested["kernel"]

    return ex


def test_tuple_in_a_scope_is_a_tuple_in_the_function() -> None:
    ex = tuple_experiment()
    observer = Recorder()
    ex.observers.append(observer)
    run = ex.run()
    shape, kernel = run.result
    assert shape == (28, 28) and type(shape) is tuple
    assert kernel == (3, 3) and type(kernel) is tuple
    # Stores keep it as a JSON list.
    assert json.loads(json.dumps(observer.config))["shape"] == [28, 28]


def test_tuple_update_is_a_tuple_in_the_function() -> None:
    shape, _ = tuple_experiment().run(config_updates={"shape": (32, 32)}).result
    assert shape == (32, 32) and type(shape) is tuple


def test_a_list_for_a_tuple_entry_is_a_tuple_in_the_function() -> None:
    # A stored config (expkit rerun), a config file and -o KEY=[...] cannot say tuple.
    ex = tuple_experiment()
    run = ex.run(config_updates={"shape": [32, 32], "nested": {"kernel": [5, 5]}})
    shape, kernel = run.result
    assert shape == (32, 32) and type(shape) is tuple
    assert kernel == (5, 5) and type(kernel) is tuple
    assert type(run.config["shape"]) is tuple
    unchanged = ex.run(config_updates={"shape": [28, 28]})
    assert "shape" not in unchanged.config_modifications.modified


# --- the script's command line

SCRIPT = textwrap.dedent(
    """
    import json
    from expkit import Experiment

    ex = Experiment("cli")

    @ex.config
    def cfg():
        a = 1
        b = 3 * a
        shape = (1, 2)
        opt = {"lr": 0.1, "momentum": 0.9}

    @ex.automain
    def main(a, b, shape, opt):
        print("RESULT " + json.dumps(
            {"a": a, "b": b, "shape": [type(shape).__name__, list(shape)], "opt": opt}
        ))
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "exp_cli.py"
    path.write_text(SCRIPT)
    (tmp_path / "variant.json").write_text('{"a": 5, "opt": {"lr": 0.5}}')
    (tmp_path / "variant.yaml").write_text("a: 7\n")
    return path


def run_script(path: Path, *args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=60,
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    return proc.returncode, result, proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {"a": 1, "b": 3}),
        (("with", "a=23"), {"a": 23, "b": 69}),
        (("with", "variant.json"), {"a": 5, "b": 15, "opt": {"lr": 0.5, "momentum": 0.9}}),
        (("with", "a=2", "variant.json"), {"a": 2, "b": 6, "opt": {"lr": 0.5, "momentum": 0.9}}),
        (("with", "variant.json", "variant.yaml"), {"a": 7, "b": 21}),
        (("with", "opt.momentum=0.5"), {"opt": {"lr": 0.1, "momentum": 0.5}}),
        (("with", "shape=(3, 4)"), {"shape": ["tuple", [3, 4]]}),
    ],
)
def test_script_updates_and_config_files(script: Path, args: tuple, expected: dict) -> None:
    code, result, stderr = run_script(script, *args)
    assert code == 0, stderr
    assert result is not None
    for key, value in expected.items():
        assert result[key] == value


def test_script_refuses_an_unused_added_entry_unless_forced(script: Path) -> None:
    code, result, stderr = run_script(script, "with", "lr=0.3")
    assert code == 1
    assert result is None
    assert "'lr'" in stderr
    assert "Traceback" not in stderr
    code, result, stderr = run_script(script, "with", "lr=0.3", "-f")
    assert code == 0, stderr
    assert result is not None and result["a"] == 1


API_TOKEN = "a module global that is no config entry"


def _scope_with_untaken_branch():
    lr = 0.1
    if lr > 1:
        API_TOKEN = "never"


def test_a_module_global_of_an_assigned_name_does_not_leak_into_the_config() -> None:
    # The scope's names are its locals: a branch not taken leaves them unset.
    result = ConfigScope(_scope_with_untaken_branch)()
    assert result.config == {"lr": 0.1}


def _scope_changing_a_dict_in_place():
    opt = {"lr": 0.1}
    opt["lr"] = 0.5
    scaled = opt["lr"] * 2


def test_a_fixed_entry_changed_in_place_stays_fixed_for_what_follows() -> None:
    result = ConfigScope(_scope_changing_a_dict_in_place)(fixed={"opt": {"lr": 0.01}})
    assert result.config["opt"] == {"lr": 0.01}
    assert result.config["scaled"] == 0.02


# --- bad config input on the command line: one line, exit code 4 ----------------------

EXP_FAST = """\
    import expkit

    @expkit.config
    def cfg():
        C = 1

    def exp_fast(C):
        print("ran with", C)
"""

ITEM = "exp_fast.py::exp_fast"


def _item_error(stdout: str) -> str:
    """The message of the run line ``ITEM  ERROR  0.00s  MESSAGE``."""
    pattern = re.compile(rf"{re.escape(ITEM)}  ERROR  [0-9.]+s  (.*)")
    [message] = [m.group(1) for m in map(pattern.fullmatch, stdout.splitlines()) if m]
    return message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "C={1:2}"], "config key 1 in the config updates must be a string"),
        (
            ["-o", "C={'a': {(1, 2): 3}}"],
            "config key (1, 2) in the config updates must be a string",
        ),
        (["-w", "keys.yaml"], "config key 1 in config file 'keys.yaml' must be a string"),
        (
            ["-w", "big.json"],
            "config entry 'C' in config file 'big.json' is inf, which JSON cannot store; "
            "give a finite number (at most 1.8e308 in size)",
        ),
        (
            ["-w", "inf.yaml"],
            "config entry 'C' in config file 'inf.yaml' is inf, which JSON cannot store; "
            "give a finite number (at most 1.8e308 in size)",
        ),
        (
            ["-w", "nan.toml"],
            "config entry 'C' in config file 'nan.toml' is nan, which JSON cannot store; "
            "give a finite number (at most 1.8e308 in size)",
        ),
    ],
)
def test_a_bad_key_or_value_is_one_line_and_exit_code_4(
    tmp_path: Path, args: list[str], message: str
) -> None:
    files = {
        "exp_fast.py": EXP_FAST,
        "keys.yaml": "C: {1: 2}\n",
        "big.json": '{"C": 1e400}',
        "inf.yaml": "C: .inf\n",
        "nan.toml": "C = nan\n",
    }
    project = write_project(tmp_path, files)
    done = run_expkit("run", *args, cwd=project)
    assert done.returncode == 4, done.stdout + done.stderr
    assert _item_error(done.stdout) == message
    assert "ran with" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (project / "runs").exists()

    shown = run_expkit("config", "exp_fast.py", *args, cwd=project)
    assert shown.returncode == 4, shown.stdout + shown.stderr
    assert error_lines(shown.stderr) == [f"ERROR: {ITEM}: {message}"]


def test_an_empty_yaml_file_on_the_command_line_is_an_empty_config(tmp_path: Path) -> None:
    files = {"exp_fast.py": EXP_FAST, "empty.yaml": "# nothing set yet\n\n"}
    project = write_project(tmp_path, files)
    done = run_expkit("run", "exp_fast.py", "-w", "empty.yaml", "-o", "C=3", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ran with 3" in done.stdout
    assert only_run(project / "runs")["config"]["C"] == 3
