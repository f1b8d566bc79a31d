"""Config files as a config source: JSON, TOML and YAML, as config and as named updates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_script

from expkit import Experiment
from expkit.errors import ConfigError, ExpkitError
from expkit_plugins import config_files

NESTED = {"a": 5, "name": "file", "opt": {"lr": 0.25, "layers": [4, 8]}}

CONTENT = {
    ".json": '{"a": 5, "name": "file", "opt": {"lr": 0.25, "layers": [4, 8]}}\n',
    ".toml": 'a = 5\nname = "file"\n\n[opt]\nlr = 0.25\nlayers = [4, 8]\n',
    ".yaml": "a: 5\nname: file\nopt:\n  lr: 0.25\n  layers: [4, 8]\n",
    ".yml": "a: 5\nname: file\nopt:\n  lr: 0.25\n  layers:\n    - 4\n    - 8\n",
}

BROKEN = {
    ".json": '{"a": 1,\n  ,}',
    ".toml": "a = 1\nb = = 2\nc = 3\n",
    ".yaml": "a: 1\nb: [1\nc: 2\n",
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def make_experiment() -> tuple[Experiment, dict]:
    """An experiment whose main function reports what it received."""
    ex = Experiment("config_files_test")
    seen: dict[str, Any] = {}

    @ex.main
    def main(a, name, opt, b=None):
        seen.update(a=a, name=name, opt=dict(opt), b=b)
        return a

    return ex, seen


@pytest.fixture(params=sorted(CONTENT))
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param in (".yaml", ".yml"):
        pytest.importorskip("yaml")
    return write(tmp_path, "variant" + request.param, CONTENT[request.param])


# --- the hook ----------------------------------------------------------------------


def test_hook_reads_each_format(config_file: Path) -> None:
    assert config_files.expkit_load_config_file(path=str(config_file)) == NESTED


def test_hook_leaves_unknown_extensions_to_other_plugins(tmp_path: Path) -> None:
    path = write(tmp_path, "settings.ini", "[a]\nx = 1\n")
    assert config_files.expkit_load_config_file(path=str(path)) is None


@pytest.mark.parametrize("ext", sorted(BROKEN))
def test_broken_file_is_one_line_naming_the_file(tmp_path: Path, ext: str) -> None:
    if ext == ".yaml":
        pytest.importorskip("yaml")
    path = write(tmp_path, "broken" + ext, BROKEN[ext])
    with pytest.raises(ConfigError) as info:
        config_files.expkit_load_config_file(path=str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "line 2" in message.replace(str(path), "")  # where the parser stopped


def test_yaml_without_pyyaml_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "variant.yaml", CONTENT[".yaml"])
    monkeypatch.setitem(sys.modules, "yaml", None)  # ``import yaml`` now fails
    with pytest.raises(ConfigError, match="PyYAML") as info:
        config_files.expkit_load_config_file(path=str(path))
    assert str(path) in str(info.value)


# --- through the experiment ---------------------------------------------------------


def test_add_config_from_a_file(config_file: Path) -> None:
    ex, seen = make_experiment()
    ex.add_config(str(config_file))
    run = ex.run()
    assert run.status == "COMPLETED"
    assert seen == {"a": 5, "name": "file", "opt": {"lr": 0.25, "layers": [4, 8]}, "b": None}
    assert run.config["opt"] == {"lr": 0.25, "layers": [4, 8]}


def test_add_config_accepts_a_path_object(tmp_path: Path) -> None:
    ex, seen = make_experiment()
    ex.add_config(write(tmp_path, "cfg.json", CONTENT[".json"]))
    ex.run()
    assert seen["a"] == 5


def test_config_file_as_named_update(config_file: Path) -> None:
    ex, seen = make_experiment()
    ex.add_config({"a": 1, "name": "default", "opt": {"lr": 0.1, "layers": [2], "decay": 0.5}})
    run = ex.run(named_configs=[str(config_file)])
    assert seen["a"] == 5
    assert seen["name"] == "file"
    # Nested entries merge key by key: the file's win, the others stay.
    assert seen["opt"] == {"lr": 0.25, "layers": [4, 8], "decay": 0.5}
    assert "a" in run.config_modifications.modified


def test_plain_updates_win_over_config_files(config_file: Path) -> None:
    ex, seen = make_experiment()
    ex.add_config({"a": 1, "name": "default", "opt": {"lr": 0.1, "layers": [2]}})
    ex.run(named_configs=[str(config_file)], config_updates={"a": 9, "opt.lr": 0.5})
    assert seen["a"] == 9
    assert seen["opt"] == {"lr": 0.5, "layers": [4, 8]}
    assert seen["name"] == "file"


def test_add_named_config_from_a_file(config_file: Path) -> None:
    ex, seen = make_experiment()
    ex.add_config({"a": 1, "name": "default", "opt": {}})
    ex.add_named_config("variant", str(config_file))
    ex.run()
    assert seen["a"] == 1
    ex.run(named_configs=["variant"])
    assert seen["a"] == 5


def test_config_files_in_order(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    first = write(tmp_path, "first.json", '{"a": 2, "name": "first"}')
    second = write(tmp_path, "second.yaml", "a: 3\n")
    ex, seen = make_experiment()
    ex.add_config({"a": 1, "name": "default", "opt": {}})
    ex.run(named_configs=[str(first), str(second)])
    assert (seen["a"], seen["name"]) == (3, "first")


def test_a_file_wins_over_a_named_config_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "variant.json", '{"a": 7}')
    ex, seen = make_experiment()
    ex.add_config({"a": 1, "name": "default", "opt": {}})
    ex.add_named_config("variant.json", {"a": 2})
    ex.run(named_configs=["variant.json"])
    assert seen["a"] == 7


def test_unknown_extension_is_a_clear_error(tmp_path: Path) -> None:
    ex, _ = make_experiment()
    path = write(tmp_path, "settings.ini", "a = 1\n")
    with pytest.raises(ExpkitError) as info:
        ex.add_config(str(path))
    message = str(info.value)
    assert "settings.ini" in message
    assert "extension" in message
    assert ".json" in message and ".toml" in message and ".yaml" in message
    assert "\n" not in message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    ex, _ = make_experiment()
    with pytest.raises(OSError, match=r"nothere\.json"):
        ex.add_config(str(tmp_path / "nothere.json"))


@pytest.mark.parametrize(("name", "text"), [("list.json", "[1, 2]"), ("scalar.yaml", "3\n")])
def test_file_without_a_mapping_is_an_error(tmp_path: Path, name: str, text: str) -> None:
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    ex, _ = make_experiment()
    with pytest.raises(ExpkitError, match="mapping") as info:
        ex.add_config(str(write(tmp_path, name, text)))
    assert name in str(info.value)


def test_broken_file_through_add_config(tmp_path: Path) -> None:
    ex, _ = make_experiment()
    with pytest.raises(ConfigError, match=r"broken\.json"):
        ex.add_config(str(write(tmp_path, "broken.json", BROKEN[".json"])))


# --- on the script command line ------------------------------------------------------

SCRIPT = """\
from expkit import Experiment

ex = Experiment("cli")


@ex.config
def cfg():
    a = 1
    b = 3 * a  # follows a
    opt = {"lr": 0.1}


@ex.automain
def main(a, b, opt):
    print("GOT", a, b, opt["lr"])
"""


def test_script_with_a_config_file_derives_entries(tmp_path: Path) -> None:
    write(tmp_path, "exp.py", SCRIPT)
    write(tmp_path, "fast.toml", "a = 4\n[opt]\nlr = 0.5\n")
    proc = run_script("exp.py", "with", "fast.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "GOT 4 12 0.5" in proc.stdout


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("settings.ini", "a = 1\n", ["settings.ini", "extension"]),
        ("broken.toml", BROKEN[".toml"], ["broken.toml"]),
        ("list.json", "[1]", ["list.json", "mapping"]),
    ],
)
def test_script_bad_config_file_is_one_line(
    tmp_path: Path, name: str, text: str, words: list[str]
) -> None:
    write(tmp_path, "exp.py", SCRIPT)
    write(tmp_path, name, text)
    proc = run_script("exp.py", "with", name, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]
