"""Finding the project root and reading ``[tool.expkit]`` from real pyproject files."""

from __future__ import annotations

from pathlib import Path

import pytest

from expkit.errors import UsageError
from expkit.projectconfig import ProjectSettings, find_rootdir, load_settings

EXPKIT_TABLE = '[tool.expkit]\npaths = ["experiments"]\n'
OTHER_TABLE = '[project]\nname = "other"\n'


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """project/ with [tool.expkit], a sub-package with its own plain pyproject, and experiments."""
    root = tmp_path / "project"
    write(root / "pyproject.toml", EXPKIT_TABLE)
    write(root / "experiments" / "exp_a.py")
    write(root / "experiments" / "deep" / "exp_b.py")
    write(root / "vendored" / "pyproject.toml", OTHER_TABLE)
    write(root / "vendored" / "exp_c.py")
    return root


# find_rootdir


def test_cwd_inside_the_project_finds_the_expkit_pyproject(project: Path) -> None:
    cwd = project / "experiments" / "deep"
    assert find_rootdir([], cwd) == (project, project / "pyproject.toml")


def test_expkit_table_wins_over_a_nearer_plain_pyproject(project: Path) -> None:
    assert find_rootdir([], project / "vendored") == (project, project / "pyproject.toml")


def test_nearest_plain_pyproject_when_no_expkit_table(tmp_path: Path) -> None:
    write(tmp_path / "outer" / "pyproject.toml", OTHER_TABLE)
    inner = write(tmp_path / "outer" / "inner" / "pyproject.toml", OTHER_TABLE)
    cwd = tmp_path / "outer" / "inner" / "src"
    cwd.mkdir()
    assert find_rootdir([], cwd) == (inner.parent, inner)


def test_no_pyproject_at_all_gives_cwd_and_none(tmp_path: Path) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    if any((parent / "pyproject.toml").exists() for parent in cwd.parents):
        pytest.skip("a pyproject.toml above the temp folder")
    assert find_rootdir([], cwd) == (cwd, None)


def test_search_starts_at_the_common_ancestor_of_the_arguments(
    project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [
        str(project / "experiments" / "exp_a.py"),
        str(project / "experiments" / "deep" / "exp_b.py"),
    ]
    assert find_rootdir(args, elsewhere) == (project, project / "pyproject.toml")


def test_relative_arguments_are_taken_from_cwd(project: Path) -> None:
    assert find_rootdir(["experiments/deep"], project) == (project, project / "pyproject.toml")


def test_node_ids_count_by_their_path_part(project: Path, tmp_path: Path) -> None:
    arg = str(project / "experiments" / "exp_a.py") + "::exp_main"
    assert find_rootdir([arg], tmp_path) == (project, project / "pyproject.toml")


def test_options_and_missing_paths_do_not_count(project: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "plain"
    cwd.mkdir()
    args = ["-q", str(project / "experiments"), "no/such/file.py"]
    assert find_rootdir(args, cwd) == (project, project / "pyproject.toml")


def test_arguments_in_two_projects_find_their_common_ancestor(tmp_path: Path) -> None:
    top = write(tmp_path / "pyproject.toml", EXPKIT_TABLE)
    write(tmp_path / "one" / "pyproject.toml", EXPKIT_TABLE)
    write(tmp_path / "two" / "pyproject.toml", EXPKIT_TABLE)
    args = [str(tmp_path / "one"), str(tmp_path / "two")]
    assert find_rootdir(args, tmp_path / "one") == (tmp_path, top)


def test_an_invalid_pyproject_on_the_way_up_is_a_usage_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "pyproject.toml", "[tool.expkit\n")
    with pytest.raises(UsageError, match=r"pyproject\.toml: not valid TOML") as info:
        find_rootdir([], tmp_path)
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)


# load_settings


def test_no_pyproject_gives_the_defaults() -> None:
    settings = load_settings(None)
    assert settings == ProjectSettings()
    assert settings.paths == ["."]
    assert settings.file_patterns == ["exp_*.py"]
    assert settings.function_patterns == ["exp_*"]
    assert settings.store is None
    assert settings.capture is None
    assert settings.plugins == []
    assert settings.beat_interval is None


def test_pyproject_without_expkit_table_gives_the_defaults(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", OTHER_TABLE + "[tool.ruff]\nline-length = 9\n")
    assert load_settings(pyproject) == ProjectSettings()


def test_every_key_is_read(tmp_path: Path) -> None:
    pyproject = write(
        tmp_path / "pyproject.toml",
        """
        [tool.expkit]
        paths = ["experiments", "more"]
        file_patterns = ["exp_*.py", "study_*.py"]
        function_patterns = ["exp_*", "study_*"]
        store = "tinydb://runs.json"
        capture = "sys"
        plugins = ["my_plugin", "no:mongo_store"]
        beat_interval = 2
        """.replace("        ", ""),
    )
    settings = load_settings(pyproject)
    assert settings == ProjectSettings(
        paths=["experiments", "more"],
        file_patterns=["exp_*.py", "study_*.py"],
        function_patterns=["exp_*", "study_*"],
        store="tinydb://runs.json",
        capture="sys",
        plugins=["my_plugin", "no:mongo_store"],
        beat_interval=2.0,
    )
    assert isinstance(settings.beat_interval, float)
    assert settings.enabled_plugins == ["my_plugin"]
    assert settings.blocked_plugins == ["mongo_store"]


def test_keys_not_written_keep_their_defaults(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[tool.expkit]\ncapture = "no"\n')
    assert load_settings(pyproject) == ProjectSettings(capture="no")


def test_empty_expkit_table_gives_the_defaults(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", "[tool.expkit]\n")
    assert load_settings(pyproject) == ProjectSettings()


def test_settings_are_frozen() -> None:
    settings = ProjectSettings()
    with pytest.raises(AttributeError):
        settings.store = "runs"  # type: ignore[misc]


def test_unknown_key_names_the_file_the_key_and_the_known_ones(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[tool.expkit]\npath = ["x"]\n')
    with pytest.raises(UsageError) as info:
        load_settings(pyproject)
    message = str(info.value)
    assert message.startswith(f"{pyproject}: [tool.expkit]: unknown key 'path' (known: paths, ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('paths = "experiments"', "paths: expected a non-empty list of non-empty strings"),
        ("paths = []", "paths: expected a non-empty list of non-empty strings"),
        ('file_patterns = ["exp_*.py", 3]', "file_patterns: expected a non-empty list"),
        ('function_patterns = [""]', "function_patterns: expected a non-empty list"),
        ("store = 1", "store: expected a store URL or path (a non-empty string), got 1"),
        ('store = ""', "store: expected a store URL or path"),
        ('capture = "tee"', "capture: expected one of 'fd', 'sys', 'no', got 'tee'"),
        ("capture = false", "capture: expected one of 'fd', 'sys', 'no', got False"),
        ('plugins = "x"', "plugins: expected a list of plugin names"),
        ('plugins = ["no:"]', "plugins: expected a list of plugin names"),
        ("beat_interval = 0", "beat_interval: expected a positive number of seconds, got 0"),
        ("beat_interval = -1.5", "beat_interval: expected a positive number of seconds"),
        ("beat_interval = true", "beat_interval: expected a positive number of seconds"),
        ('beat_interval = "10"', "beat_interval: expected a positive number of seconds"),
        ("beat_interval = inf", "beat_interval: expected a positive number of seconds"),
    ],
)
def test_wrong_types_name_the_file_the_key_and_what_is_expected(
    tmp_path: Path, line: str, expected: str
) -> None:
    pyproject = write(tmp_path / "pyproject.toml", f"[tool.expkit]\n{line}\n")
    with pytest.raises(UsageError) as info:
        load_settings(pyproject)
    message = str(info.value)
    assert message.startswith(f"{pyproject}: [tool.expkit] {expected}")
    assert "\n" not in message


def test_expkit_written_as_a_value_not_a_table_is_an_error(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[tool]\nexpkit = "yes"\n')
    with pytest.raises(UsageError, match=r"tool\.expkit: expected a table, got 'yes'"):
        load_settings(pyproject)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", "[tool.expkit]\npaths = [\n")
    with pytest.raises(UsageError) as info:
        load_settings(pyproject)
    assert str(info.value).startswith(f"{pyproject}: not valid TOML: ")


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot be read"):
        load_settings(tmp_path / "pyproject.toml")


def test_found_pyproject_feeds_load_settings(project: Path) -> None:
    rootdir, pyproject = find_rootdir([], project / "experiments")
    assert rootdir == project
    assert load_settings(pyproject).paths == ["experiments"]
