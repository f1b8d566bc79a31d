"""expkit.installed reads distributions as importlib.metadata does, without importing it."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest
from cli_helpers import fresh_python

from expkit import installed


def _dist_info(site, folder, name, version, entry_points=""):
    path = site / folder
    path.mkdir(parents=True)
    (path / ("PKG-INFO" if folder.endswith("egg-info") else "METADATA")).write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not-a-header\n"
    )
    if entry_points:
        (path / "entry_points.txt").write_text(entry_points)
    return path


@pytest.fixture
def site(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setattr(sys, "path", [str(first), str(second)])
    return first, second


def test_every_installed_distribution_matches_importlib_metadata():
    expected = {}
    for dist in metadata.distributions():
        expected.setdefault(installed.canonical(dist.metadata["Name"]), dist)
    found = installed.distributions()
    assert set(found) == set(expected)
    for name, dist in expected.items():
        assert (found[name].name, found[name].version) == (dist.metadata["Name"], dist.version)


def test_entry_points_of_every_group_match_importlib_metadata():
    for group in metadata.entry_points().groups:
        expected = sorted(
            (ep.name, ep.value, ep.dist.metadata["Name"])
            for ep in metadata.entry_points(group=group)
        )
        found = sorted((ep.name, ep.value, ep.dist.name) for ep in installed.entry_points(group))
        assert found == expected, group


def test_the_builtin_plugins_are_found_as_entry_points():
    def names(group: str) -> set[str]:
        return {
            ep.name for ep in installed.entry_points(group) if ep.dist.canonical_name == "expkit"
        }

    assert {"file_store", "tinydb_store", "mongo_store", "sql_store"} <= names("expkit")
    assert {"session", "terminal", "runs"} <= names("expkit.command")


def test_dist_info_egg_info_and_egg_folders_are_read(site, tmp_path):
    first, _ = site
    _dist_info(
        first,
        "My_Plugin-1.2.dist-info",
        "My-Plugin",
        "1.2",
        "[console_scripts]\nmy = my_plugin:main\n\n[expkit]\n# a comment\nmine = my_plugin.hooks\n",
    )
    _dist_info(first, "legacy.egg-info", "Legacy", "0.3")
    (first / "old_style-2.0-py3.11.egg-info").write_text("Name: old-style\nVersion: 2.0\n")
    egg = tmp_path / "eggy-4.0-py3.11.egg"
    _dist_info(egg, "EGG-INFO", "eggy", "4.0", "[expkit]\neggy = eggy.plugin\n")
    sys.path.append(str(egg))

    assert installed.version("my_plugin") == installed.version("MY.PLUGIN") == "1.2"
    assert installed.distribution("my-plugin").name == "My-Plugin"
    assert installed.version("legacy") == "0.3"
    assert installed.version("old-style") == "2.0"
    assert installed.version("not-installed") is None
    found = [(ep.name, ep.value, ep.dist.name) for ep in installed.entry_points("expkit")]
    assert found == [("mine", "my_plugin.hooks", "My-Plugin"), ("eggy", "eggy.plugin", "eggy")]


def test_the_first_folder_on_sys_path_wins_a_name(site):
    first, second = site
    _dist_info(first, "dup-1.0.dist-info", "dup", "1.0", "[expkit]\nnew = dup.new\n")
    _dist_info(second, "dup-0.9.dist-info", "dup", "0.9", "[expkit]\nold = dup.old\n")
    assert installed.version("dup") == "1.0"
    assert [ep.name for ep in installed.entry_points("expkit")] == ["new"]


def test_a_changed_sys_path_is_scanned_again(site, tmp_path):
    late = tmp_path / "late"
    _dist_info(late, "late-5.dist-info", "late", "5")
    assert installed.version("late") is None
    sys.path.append(str(late))
    assert installed.version("late") == "5"


def test_starting_expkit_does_not_import_importlib_metadata():
    code = (
        "import sys\n"
        "from expkit.pluginmanager import get_plugin_manager\n"
        "get_plugin_manager()\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    assert fresh_python("-c", code).strip() == "False"


def test_the_working_directory_on_sys_path_is_the_current_one(site, tmp_path, monkeypatch):
    project = tmp_path / "project"
    _dist_info(project, "here-1.0.dist-info", "here", "1.0", "[expkit]\nhere = here.plugin\n")
    monkeypatch.chdir(project)
    sys.path.insert(0, "")  # as in `python -c`, the REPL and notebooks
    assert [ep.name for ep in installed.entry_points("expkit")] == ["here"]
    monkeypatch.chdir(tmp_path)
    # "" now means tmp_path, which holds no distribution: the scan follows the working directory.
    assert installed.entry_points("expkit") == []
    monkeypatch.chdir(project)
    assert installed.version("here") == "1.0"


def test_a_distribution_without_a_version_has_none(site):
    first, _ = site
    folder = first / "bare-0.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text("Metadata-Version: 2.1\nName: bare\n")
    assert installed.distribution("bare").name == "bare"
    assert installed.version("bare") is None
