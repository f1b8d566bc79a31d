"""What a Sacred user relies on when migrating by changing imports (docs/migrating.rst).

Each test is an experiment written here that does what one of Sacred's examples or
documented behaviours does: config scopes that log, a custom ``ex.logger``, the log lines
of a run, Sacred's errors where Sacred has them, host-info gatherers, ``SETTINGS``.
"""

# Config scopes are functions whose locals are the point: they are never "unused".
# ruff: noqa: F841

from __future__ import annotations

import io
import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_script

import expkit
from expkit import (
    SETTINGS,
    Experiment,
    IgnoreHostInfo,
    Ingredient,
    host_info_gatherer,
    host_info_getter,
)
from expkit import utils as expkit_utils
from expkit.info import host_info_gatherers
from expkit.pluginmanager import create_plugin_manager
from expkit.settings import SettingError
from expkit.store import open_reader


class Recorder(logging.Handler):
    """Keeps (logger name, level name, message) of every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.levelname, record.getMessage()))


@pytest.fixture
def recorder() -> Any:
    handler = Recorder()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


# --- config scopes and named configs ------------------------------------------------


def test_a_config_scope_may_log_through_log(recorder: Recorder) -> None:
    ex = Experiment("hello_cs", interactive=True)
    data = Ingredient("data")
    ex.ingredients.append(data)

    @data.config
    def data_cfg(_log):
        path = "iris.csv"
        _log.info("data from %s", path)

    @ex.config
    def cfg(_log):
        recipient = "world"
        message = f"Hello {recipient}!"
        _log.debug("built %r", message)

    @ex.main
    def main(message):
        return message

    run = ex.run(config_updates={"recipient": "Bob"})
    assert run.result == "Hello Bob!"
    assert set(run.config) == {"recipient", "message", "data", "seed"}
    assert ("root", "DEBUG", "built 'Hello Bob!'") in recorder.lines
    assert ("data", "INFO", "data from iris.csv") in recorder.lines


def test_a_named_config_reads_the_entries_set_before_it() -> None:
    ex = Experiment("named", interactive=True)

    @ex.config
    def cfg():
        a = 1

    @ex.named_config
    def first():
        a = 10

    @ex.named_config
    def double(a):
        a = a * 2

    @ex.main
    def main(a):
        return a

    assert ex.run(named_configs=["first", "double"]).result == 20
    assert ex.run(named_configs=["first", "double"], config_updates={"a": 3}).result == 3
    # As in Sacred, a KeyError: nothing set 'a' before 'double'.
    with pytest.raises(KeyError, match="not in preset for ConfigScope") as exc:
        ex.run(named_configs=["double", "first"])
    assert isinstance(exc.value, expkit_utils.ConfigError)
    assert str(exc.value).startswith("config scope 'test_a_named_config_reads_the_entries_set")


def test_each_ingredient_sees_the_config_of_every_ingredient_below_it() -> None:
    leaf = Ingredient("leaf")
    middle = Ingredient("middle", [leaf])
    top = Ingredient("top", [middle])
    ex = Experiment("nested", [top], interactive=True)
    seen: dict = {}

    @ex.config
    def cfg():
        a = 1
        seed = 42

    @top.config
    def top_cfg():
        b = 1

    @middle.config
    def middle_cfg():
        c = 2

    @leaf.config
    def leaf_cfg():
        d = 3

    @leaf.capture
    def leaf_view(_config):
        seen["leaf"] = _config

    @middle.capture
    def middle_view(_config):
        seen["middle"] = _config

    @top.capture
    def top_view(_config):
        seen["top"] = _config

    @ex.main
    def main(_config):
        leaf_view(), middle_view(), top_view()
        return _config

    result = ex.run().result
    assert seen["leaf"] == {"d": 3}
    assert seen["middle"] == {"c": 2, "leaf": {"d": 3}}
    assert seen["top"] == {"b": 1, "middle": {"c": 2}, "leaf": {"d": 3}}
    assert result == {"a": 1, "seed": 42, "top": {"b": 1}, "middle": {"c": 2}, "leaf": {"d": 3}}


def test_create_run_gives_the_config_without_running() -> None:
    ex = Experiment("inspect", interactive=True)
    calls = []

    @ex.config
    def cfg():
        a = 5  # documented entry

    @ex.main
    def main(a):
        calls.append(a)

    run = ex._create_run(config_updates={"a": 6})
    assert run.config["a"] == 6
    assert run.config_modifications.docs["a"] == "documented entry"
    assert calls == [] and run.status is None


# --- logging ------------------------------------------------------------------------


LOGGING_EXPERIMENT = """\
import logging
from expkit import Experiment

ex = Experiment("log_example")
logger = logging.getLogger("mylogger")
handler = logging.StreamHandler()
handler.setFormatter(logging.Formatter('[%(levelname).1s] %(name)s >> "%(message)s"'))
logger.addHandler(handler)
logger.setLevel("INFO")
ex.logger = logger

@ex.config
def cfg(_log):
    number = 2
    _log.info("config for %d", number)

@ex.capture
def transmogrify(number, _log):
    _log.warning("No gizmo. Can't transmogrify!")
    return 0

@ex.automain
def main(number, _log):
    _log.info("Attempting to transmogrify %d...", number)
    return transmogrify()
"""


def test_ex_logger_carries_the_runs_messages_and_log(tmp_path: Path) -> None:
    (tmp_path / "log_example.py").write_text(LOGGING_EXPERIMENT)
    done = run_script("log_example.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        '[I] mylogger >> "config for 2"',
        '[W] mylogger.log_example >> "No observers have been added to this run"',
        "[I] mylogger.log_example >> \"Running command 'main'\"",
        '[I] mylogger.log_example >> "Started"',
        '[I] mylogger.main >> "Attempting to transmogrify 2..."',
        '[W] mylogger.transmogrify >> "No gizmo. Can\'t transmogrify!"',
        '[I] mylogger.log_example >> "Result: 0"',
        '[I] mylogger.log_example >> "Completed after 0:00:00"',
    ]
    quiet = run_script("log_example.py", "-l", "WARNING", cwd=tmp_path)
    assert quiet.stderr.splitlines() == [
        '[W] mylogger.log_example >> "No observers have been added to this run"',
        '[W] mylogger.transmogrify >> "No gizmo. Can\'t transmogrify!"',
    ]


def test_ex_logger_in_process(recorder: Recorder) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("lab")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    ex = Experiment("trial", interactive=True)
    ex.logger = logger

    @ex.main
    def main(_log):
        _log.info("inside")

    try:
        ex.run(options={"--loglevel": "INFO"})
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert stream.getvalue().splitlines() == [
        "No observers have been added to this run",
        "Running command 'main'",
        "Started",
        "inside",
        "Completed after 0:00:00",
    ]
    assert recorder.lines == []  # nothing went to the root logger
    assert logger.level == logging.INFO


HELLO = """\
from expkit import Experiment

ex = Experiment("hello_cs")

@ex.config
def cfg():
    recipient = "world"
    message = "Hello {}!".format(recipient)

@ex.command
def shout():
    print("WHAZZZUUUUUUUUUUP!!!????")

@ex.automain
def main(message):
    print(message)
"""


@pytest.mark.parametrize(
    ("args", "stderr", "stdout"),
    [
        (
            ["with", "recipient=Bob"],
            [
                "WARNING - hello_cs - No observers have been added to this run",
                "INFO - hello_cs - Running command 'main'",
                "INFO - hello_cs - Started",
                "INFO - hello_cs - Completed after 0:00:00",
            ],
            ["Hello Bob!"],
        ),
        (
            ["shout", "-l", "WARNING"],
            ["WARNING - hello_cs - No observers have been added to this run"],
            ["WHAZZZUUUUUUUUUUP!!!????"],
        ),
        (["-u"], ["INFO - hello_cs - Running command 'main'", "INFO - hello_cs - Started"], None),
    ],
)
def test_the_log_lines_of_a_script_run_are_sacreds(
    tmp_path: Path, args: list[str], stderr: list[str], stdout: list[str] | None
) -> None:
    (tmp_path / "hello.py").write_text(HELLO)
    done = run_script("hello.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    if stdout is None:  # -u: no warning; the lines start as without it
        assert done.stderr.splitlines()[:2] == stderr
    else:
        assert done.stderr.splitlines() == stderr
        assert done.stdout.splitlines() == stdout


def test_the_no_observers_warning_is_not_captured_output(tmp_path: Path) -> None:
    ex = Experiment("quiet", interactive=True)
    seen: dict = {}

    @ex.main
    def main(_run):
        print("printed")
        seen["run"] = _run

    ex.run(options={"--capture": "sys"})
    assert "No observers" not in seen["run"].captured_out


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SacredError",
        "SacredInterrupt",
        "TimeoutInterrupt",
        "ConfigError",
        "ConfigAddedError",
        "MissingConfigError",
        "NamedConfigNotFoundError",
        "CircularDependencyError",
        "SignatureError",
        "InvalidConfigError",
        "ObserverError",
    ],
)
def test_sacreds_errors_are_in_expkit_utils(name: str) -> None:
    error = getattr(expkit_utils, name)
    assert issubclass(error, Exception)
    assert name in expkit_utils.__all__


def test_an_unused_added_entry_is_a_config_added_error() -> None:
    ex = Experiment("added", interactive=True)

    @ex.config
    def cfg():
        d = {"e": 3}

    @ex.main
    def main():
        pass

    ex.run(config_updates={"d": {"e": 7}})  # in the config: fine
    with pytest.raises(expkit_utils.ConfigAddedError) as exc:
        ex.run(config_updates={"d": {"f": 3}})
    error = exc.value
    assert isinstance(error, expkit_utils.ConfigError)
    assert isinstance(error, expkit_utils.SacredError)
    assert error.conflicting_configs == ("d.f",)
    assert error.config["d"] == {"e": 3, "f": 3}
    assert str(error).startswith("Added new config entry that is not used anywhere: 'd.f' = 3")
    assert "\n" not in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.conflicting_configs) == (
        expkit_utils.ConfigAddedError,
        str(error),
        ("d.f",),
    )


def test_an_invalid_config_error_raised_by_the_user_fails_the_run() -> None:
    ex = Experiment("checked", interactive=True)
    ex.add_config(a=1, b={"a": 2})

    @ex.main
    def main(a, b):
        if a != b["a"]:
            raise expkit_utils.InvalidConfigError(
                "Need to be equal", conflicting_configs=("a", "b.a"), config={"a": a, "b": b}
            )

    with pytest.raises(expkit_utils.InvalidConfigError) as exc:
        ex.run()
    assert (
        str(exc.value) == "Need to be equal (conflicting configuration values: 'a' = 1, 'b.a' = 2)"
    )


def test_a_missing_named_config_is_named_config_not_found_error() -> None:
    ex = Experiment("named", interactive=True)

    @ex.named_config
    def large():
        size = 10

    @ex.main
    def main(size=1):
        return size

    with pytest.raises(expkit_utils.NamedConfigNotFoundError) as exc:
        ex.run(named_configs=["lagre"])
    assert str(exc.value).startswith(
        "Named config not found: \"lagre\". Available config values are: ('large',)"
    )
    assert "did you mean 'large'?" in str(exc.value)


def test_a_call_that_does_not_fit_is_a_signature_error() -> None:
    ex = Experiment("calls", interactive=True)
    ex.add_config(a=1)
    caught: list = []

    @ex.capture
    def helper(a, b=2):
        return a + b

    @ex.main
    def main():
        for call in (lambda: helper(1, 2, 3), lambda: helper(c=3), lambda: helper(5, a=6)):
            try:
                call()
            except TypeError as exc:  # a SignatureError is a TypeError, as in Sacred
                caught.append(exc)
        return helper(b=10)

    assert ex.run().result == 11
    assert [type(exc) for exc in caught] == [expkit_utils.SignatureError] * 3
    assert [str(exc).split(" got ")[1] for exc in caught] == [
        "unexpected argument(s): (3,)",
        "unexpected kwarg(s): ['c']",
        "multiple values for argument(s) ['a']",
    ]


def test_a_missing_config_value_is_missing_config_error() -> None:
    ex = Experiment("missing", interactive=True)
    ex.main(lambda a: a)
    with pytest.raises(expkit_utils.MissingConfigError, match="'a'"):
        ex.run()


def test_circular_ingredients_are_a_circular_dependency_error() -> None:
    ing = Ingredient("ing")
    ex = Experiment("exp", ingredients=[ing], interactive=True)
    ex.main(lambda: None)
    ing.ingredients.append(ex)
    with pytest.raises(expkit_utils.CircularDependencyError, match="exp->ing->exp"):
        ex.run()
    other = Ingredient("other", ingredients=[ing])
    ing.ingredients = [other]
    with pytest.raises(expkit_utils.CircularDependencyError, match="ing->other->ing"):
        ing.get_experiment_info()


def test_a_missing_source_file_is_refused_when_added(tmp_path: Path) -> None:
    ing = Ingredient("data")
    with pytest.raises(ValueError, match="does not exist"):
        ing.add_source_file(tmp_path / "nonexisting.py")
    kept = tmp_path / "helper.py"
    kept.write_text("X = 1\n")
    ing.add_source_file(kept)
    names = [name for name, _ in ing.get_experiment_info()["sources"]]
    assert any(name.endswith("helper.py") for name in names)


def test_an_ingredient_has_an_experiment_info() -> None:
    ing = Ingredient("tickle")
    ing.add_package_dependency("django", "1.8.2")
    info = ing.get_experiment_info()
    assert info["name"] == "tickle"
    assert "django==1.8.2" in info["dependencies"]
    assert any(name.endswith("test_migration.py") for name, _ in info["sources"])


def test_gathered_names_carry_the_ingredient_path() -> None:
    ing = Ingredient("tickle")
    other = Ingredient("other", ingredients=[ing])
    ex = Experiment("exp", ingredients=[other], interactive=True)

    @ing.command
    def foo():
        pass

    @other.command
    def bar():
        pass

    @ex.command
    def baz():
        pass

    @other.named_config
    def small():
        size = 1

    assert list(other.gather_commands()) == [("other.bar", bar), ("tickle.foo", foo)]
    assert dict(ex.gather_commands()) == {"baz": baz, "other.bar": bar, "tickle.foo": foo}
    assert list(other.gather_named_configs()) == [("other.small", small)]


# --- host info ----------------------------------------------------------------------


def test_additional_host_info_gatherers_are_recorded() -> None:
    @host_info_gatherer("greeting")
    def greeting():
        return "hello world"

    @host_info_gatherer("gpu_memory")
    def no_gpu():
        raise IgnoreHostInfo()

    ex = Experiment("ator3000", additional_host_info=[greeting, no_gpu], interactive=True)
    ex.main(lambda: None)
    run = ex.run()
    assert run.host_info["greeting"] == "hello world"
    assert "gpu_memory" not in run.host_info
    assert greeting() == "hello world"


def test_host_info_getter_is_deprecated_but_works() -> None:
    try:
        with pytest.warns(DeprecationWarning, match="host_info_gatherer"):

            @host_info_getter(name="lab")
            def where():
                return "lab 3"

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)

            @host_info_getter
            def hostname():  # a built-in entry's name: the built-in one wins, as in Sacred
                return "not this"

        ex = Experiment("hosted", interactive=True)
        ex.main(lambda: None)
        run = ex.run()
        assert run.host_info["lab"] == "lab 3"
        assert run.host_info["hostname"] != "not this"
    finally:
        host_info_gatherers.pop("lab", None)
        host_info_gatherers.pop("hostname", None)


# --- SETTINGS -----------------------------------------------------------------------


def test_settings_read_and_set_as_in_sacred(monkeypatch: pytest.MonkeyPatch) -> None:
    for section, keys in {
        "CONFIG": {
            "ENFORCE_KEYS_MONGO_COMPATIBLE",
            "ENFORCE_KEYS_JSONPICKLE_COMPATIBLE",
            "ENFORCE_VALID_PYTHON_IDENTIFIER_KEYS",
            "ENFORCE_STRING_KEYS",
            "ENFORCE_KEYS_NO_EQUALS",
            "READ_ONLY_CONFIG",
            "IGNORED_COMMENTS",
            "NUMPY_RANDOM_LEGACY_API",
        },
        "HOST_INFO": {"INCLUDE_GPU_INFO", "INCLUDE_CPU_INFO", "CAPTURED_ENV"},
        "COMMAND_LINE": {"STRICT_PARSING", "SHOW_DISABLED_OPTIONS"},
    }.items():
        assert keys <= set(SETTINGS[section].keys())
    for key in ("CAPTURE_MODE", "DISCOVER_SOURCES", "DISCOVER_DEPENDENCIES"):
        assert key in SETTINGS
    assert SETTINGS["CONFIG"]["READ_ONLY_CONFIG"] is SETTINGS.CONFIG.READ_ONLY_CONFIG
    monkeypatch.setitem(SETTINGS.COMMAND_LINE, "SHOW_DISABLED_OPTIONS", False)
    assert SETTINGS.COMMAND_LINE.SHOW_DISABLED_OPTIONS is False
    with pytest.raises(SettingError, match="unknown setting 'INVALID_SETTING'"):
        SETTINGS.INVALID_SETTING = 1
    with pytest.raises(SettingError, match="'CONFIG' is a group of settings"):
        SETTINGS["CONFIG"] = "invalid"


def _keyed_experiment(key: str) -> Experiment:
    ex = Experiment("keys", interactive=True)
    ex.add_config({key: 1})
    ex.main(lambda: None)
    return ex


def test_identifier_keys_are_enforced_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = _keyed_experiment("learning-rate")
    ex.run()  # allowed by default, as in Sacred
    monkeypatch.setattr(SETTINGS.CONFIG, "ENFORCE_VALID_PYTHON_IDENTIFIER_KEYS", True)
    with pytest.raises(expkit_utils.ConfigError, match="must be Python identifiers"):
        _keyed_experiment("learning-rate")


def test_jsonpickle_tags_are_refused_as_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(expkit_utils.ConfigError, match="jsonpickle's tags"):
        _keyed_experiment("py/object")
    # Sacred raised a KeyError: `except KeyError:` written for it still catches the refusal.
    with pytest.raises(KeyError) as refused:
        _keyed_experiment("$f")
    assert str(refused.value) == (
        "invalid config key '$f' in add_config: keys may not contain '.' or start with '$'"
    )
    monkeypatch.setattr(SETTINGS.CONFIG, "ENFORCE_KEYS_JSONPICKLE_COMPATIBLE", False)
    assert _keyed_experiment("py/object").run().config["py/object"] == 1


STRICT = """\
import sys
from expkit import SETTINGS, Experiment

SETTINGS.COMMAND_LINE.STRICT_PARSING = "strict" in sys.argv[0]
ex = Experiment("parsing")

@ex.automain
def main(name="x"):
    print(repr(name))
"""


def test_strict_parsing_refuses_bare_words(tmp_path: Path) -> None:
    (tmp_path / "loose.py").write_text(STRICT)
    (tmp_path / "strict.py").write_text(STRICT)
    loose = run_script("loose.py", "with", "name=bob", "-l", "ERROR", cwd=tmp_path)
    assert loose.stdout == "'bob'\n"
    strict = run_script("strict.py", "with", "name=bob", cwd=tmp_path)
    assert strict.returncode == 1
    assert strict.stderr.strip() == (
        "ERROR: update 'name=bob': 'bob' is not a Python literal "
        "(SETTINGS.COMMAND_LINE.STRICT_PARSING is on): quote strings, e.g. name='\"text\"'"
    )
    quoted = run_script("strict.py", "with", 'name="bob"', "-l", "ERROR", cwd=tmp_path)
    assert quoted.stdout == "'bob'\n"


def _sacred_file_run(basedir: Path) -> None:
    """Run 1 as Sacred 0.8.7's FileStorageObserver writes an experiment that returns numpy
    values: jsonpickle's numpy handlers (scalars by value, small arrays as lists)."""
    folder = basedir / "1"
    folder.mkdir(parents=True)
    f64 = {"py/object": "numpy.float64", "dtype": "float64", "value": 0.5}
    run = {
        "artifacts": [],
        "command": "main",
        "experiment": {"name": "np", "base_dir": "/p", "sources": [], "dependencies": []},
        "heartbeat": "2020-01-02T03:04:06.000000",
        "host": {"hostname": "box"},
        "meta": {"command": "main", "options": {}},
        "resources": [],
        "result": {
            "acc": f64,
            "curve": {"py/object": "numpy.ndarray", "dtype": "int64", "values": [1, 2]},
        },
        "start_time": "2020-01-02T03:04:05.000000",
        "status": "COMPLETED",
        "stop_time": "2020-01-02T03:04:07.000000",
    }
    (folder / "run.json").write_text(json.dumps(run))
    config = {"seed": 1, "scale": {"py/object": "numpy.int64", "dtype": "int64", "value": 3}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "info.json").write_text(json.dumps({"best": f64}))
    (folder / "cout.txt").write_text("")


def test_numpy_values_sacred_wrote_are_read_as_plain_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sacred_file_run(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    reader = open_reader(create_plugin_manager(), "runs")
    [listed] = reader.list_runs()
    assert listed.result == {"acc": 0.5, "curve": [1, 2]}
    record = reader.get_run("1")
    assert (record.result["acc"], record.config["scale"], record.info) == (0.5, 3, {"best": 0.5})
    # A filter on the result finds it, as it would an expkit run's.
    assert expkit.main(["runs", "list", "result.acc>0.1", "--store", "runs"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 run of np in runs"
