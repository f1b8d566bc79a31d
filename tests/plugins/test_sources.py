"""Source, dependency and git capture, on real files, real imports and real git repositories."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from cli_helpers import run_expkit, stored_runs, write_project

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.records import Dependency, Repository, Source
from expkit.settings import SETTINGS
from expkit_plugins import sources

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs a git executable")

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def experiment(
    base_dir: Path,
    mainfile: Path | None = None,
    extra_sources: set[str] | None = None,
    extra_dependencies: set[Dependency] | None = None,
    save_git_info: bool = True,
) -> SimpleNamespace:
    """An object with exactly the attributes the plugin reads from an experiment."""
    return SimpleNamespace(
        base_dir=str(base_dir),
        mainfile=None if mainfile is None else str(mainfile),
        extra_sources=extra_sources or set(),
        extra_dependencies=extra_dependencies or set(),
        save_git_info=save_git_info,
    )


def info(exp: SimpleNamespace) -> dict:
    return sources.expkit_experiment_info(experiment=exp)


@pytest.fixture
def import_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, str], ModuleType]]:
    """Import a module from a folder put first on sys.path; forget it afterwards."""
    imported: list[str] = []

    def do_import(folder: Path, name: str) -> ModuleType:
        monkeypatch.syspath_prepend(str(folder))
        imported.append(name)
        return importlib.import_module(name)

    yield do_import
    for name in imported:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


# --- md5 ----------------------------------------------------------------------


def test_md5_of_matches_hashlib_over_several_blocks(tmp_path: Path) -> None:
    data = os.urandom((5 << 20) // 2)  # 2.5 MiB: three 1 MiB blocks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sources.md5_of(path) == hashlib.md5(data).hexdigest()
    assert sources.md5_of(str(path)) == hashlib.md5(data).hexdigest()


def test_md5_of_sees_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.py", "x = 1\n")
    assert sources.md5_of(path) == hashlib.md5(b"x = 1\n").hexdigest()
    path.write_text("x = 12345\n")
    assert sources.md5_of(path) == hashlib.md5(b"x = 12345\n").hexdigest()


def test_md5_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sources.md5_of(tmp_path / "nope.py")


# --- sources ------------------------------------------------------------------


def test_main_file_and_the_local_modules_it_imports_are_sources(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    main = write(
        tmp_path / "exp_main.py",
        "import srcmod_helper\nfrom srcmod_pkg import sub\n\ndef later():\n"
        "    import srcmod_lazy\n",
    )
    helper = write(tmp_path / "srcmod_helper.py", "from srcmod_deep import VALUE\n")
    write(tmp_path / "srcmod_deep.py", "VALUE = 1\n")
    write(tmp_path / "srcmod_pkg" / "__init__.py", "")
    sub = write(tmp_path / "srcmod_pkg" / "sub.py", "from . import rel\n")
    write(tmp_path / "srcmod_pkg" / "rel.py", "y = 2\n")
    write(tmp_path / "srcmod_lazy.py", "")
    write(tmp_path / "srcmod_other.py", "z = 3\n")  # imported, but by another experiment
    write(tmp_path / "not_imported.py", "import srcmod_other\n")
    for name in ("srcmod_helper", "srcmod_pkg.sub", "srcmod_lazy", "srcmod_other"):
        import_module(tmp_path, name)

    found = info(experiment(tmp_path, main))["sources"]

    assert [s.name for s in found] == [
        "exp_main.py",
        "srcmod_deep.py",
        "srcmod_helper.py",
        "srcmod_lazy.py",
        os.path.join("srcmod_pkg", "__init__.py"),
        os.path.join("srcmod_pkg", "rel.py"),
        os.path.join("srcmod_pkg", "sub.py"),
    ]
    by_name = {s.name: s for s in found}
    assert by_name["srcmod_helper.py"] == Source(
        name="srcmod_helper.py",
        md5=hashlib.md5(helper.read_bytes()).hexdigest(),
        path=os.path.realpath(helper),
    )
    assert by_name[os.path.join("srcmod_pkg", "sub.py")].path == os.path.realpath(sub)
    assert by_name["exp_main.py"].md5 == hashlib.md5(main.read_bytes()).hexdigest()


def test_a_module_the_experiment_imports_only_when_it_runs_is_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sources are gathered as the run starts: these imports have not happened yet.
    monkeypatch.syspath_prepend(str(tmp_path))  # as the experiment's folder is
    main = write(
        tmp_path / "exp_main.py",
        "def main():\n    import lazymod_helper\n    from lazymod_pkg.sub import f\n"
        "    import lazymod_missing\n    from os import path\n",
    )
    write(tmp_path / "lazymod_helper.py", "def g():\n    from lazymod_deep import VALUE\n")
    write(tmp_path / "lazymod_deep.py", "VALUE = 1\n")
    write(tmp_path / "lazymod_pkg" / "__init__.py", "")
    write(tmp_path / "lazymod_pkg" / "sub.py", "from .rel import y\n\ndef f():\n    pass\n")
    write(tmp_path / "lazymod_pkg" / "rel.py", "y = 2\n")
    write(tmp_path / "lazymod_unused.py", "")

    found = info(experiment(tmp_path, main))["sources"]

    assert [s.name for s in found] == [
        "exp_main.py",
        "lazymod_deep.py",
        "lazymod_helper.py",
        os.path.join("lazymod_pkg", "__init__.py"),
        os.path.join("lazymod_pkg", "rel.py"),
        os.path.join("lazymod_pkg", "sub.py"),
    ]
    assert not any(name.startswith("lazymod") for name in sys.modules)  # nothing was run


def test_without_a_main_file_every_imported_local_module_is_a_source(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    # An interactive experiment: nothing says what it imports.
    write(tmp_path / "srcmod_any.py", "")
    import_module(tmp_path, "srcmod_any")
    assert [s.name for s in info(experiment(tmp_path))["sources"]] == ["srcmod_any.py"]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_module_symlinked_from_elsewhere_into_the_project_is_a_source(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    # As `flit install --symlink` leaves a one-module project: site-packages/mod.py -> project.
    project = tmp_path / "project"
    real = write(project / "symmod_abc.py", "VALUE = 1\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "symmod_abc.py").symlink_to(real)
    import_module(site, "symmod_abc")

    found = info(experiment(project))
    assert [(s.name, s.path) for s in found["sources"]] == [
        ("symmod_abc.py", os.path.realpath(real))
    ]
    assert not any(d.name == "symmod_abc" for d in found["dependencies"])


def test_installed_code_under_base_dir_is_no_source(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    venv = tmp_path / ".venv"
    write(venv / "pyvenv.cfg", "home = /usr/bin\n")
    write(venv / "lib" / "venvmod_abc.py", "")
    write(tmp_path / "build" / "site-packages" / "sitemod_abc.py", "")
    write(tmp_path / "build" / "__pycache__" / "cachemod_abc.py", "")
    import_module(venv / "lib", "venvmod_abc")
    import_module(tmp_path / "build" / "site-packages", "sitemod_abc")
    import_module(tmp_path / "build" / "__pycache__", "cachemod_abc")

    assert info(experiment(tmp_path))["sources"] == []


def test_standard_library_and_site_packages_are_no_sources() -> None:
    # A base dir above the interpreter's install holds the stdlib and site-packages.
    base = os.path.dirname(os.path.realpath(sys.base_prefix))
    names = {s.name for s in info(experiment(Path(base), save_git_info=False))["sources"]}
    os_file = os.path.relpath(os.path.realpath(os.__file__), base)
    pluggy_file = os.path.relpath(
        os.path.realpath(importlib.import_module("pluggy").__file__), base
    )
    assert os_file not in names
    assert pluggy_file not in names


def test_extra_sources_are_included_even_outside_base_dir(tmp_path: Path) -> None:
    base = tmp_path / "project"
    base.mkdir()
    inside = write(base / "data" / "notes.py", "a = 1\n")
    outside = write(tmp_path / "shared.py", "b = 2\n")
    exp = experiment(base, extra_sources={str(inside), str(outside)})

    found = info(exp)["sources"]

    assert [(s.name, s.md5) for s in found] == [
        (os.path.join("..", "shared.py"), hashlib.md5(b"b = 2\n").hexdigest()),
        (os.path.join("data", "notes.py"), hashlib.md5(b"a = 1\n").hexdigest()),
    ]


def test_missing_extra_source_is_a_usage_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.py")
    with pytest.raises(UsageError, match=r"gone\.py"):
        info(experiment(tmp_path, extra_sources={missing}))


def test_discover_sources_none_keeps_main_and_extra_only(
    tmp_path: Path,
    import_module: Callable[[Path, str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    main = write(tmp_path / "exp_main.py", "")
    extra = write(tmp_path / "extra.py", "")
    write(tmp_path / "nonemode_helper.py", "")
    import_module(tmp_path, "nonemode_helper")
    monkeypatch.setattr(SETTINGS, "DISCOVER_SOURCES", "none")

    found = info(experiment(tmp_path, main, extra_sources={str(extra)}))["sources"]

    assert [s.name for s in found] == ["exp_main.py", "extra.py"]


def test_discover_sources_dir_finds_every_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.py", "")
    write(tmp_path / "pkg" / "b.py", "")
    write(tmp_path / "pkg" / "data.txt", "")
    write(tmp_path / "env" / "pyvenv.cfg", "")
    write(tmp_path / "env" / "lib" / "c.py", "")
    write(tmp_path / ".hidden" / "d.py", "")
    monkeypatch.setattr(SETTINGS, "DISCOVER_SOURCES", "dir")

    found = info(experiment(tmp_path, save_git_info=False))["sources"]

    assert [s.name for s in found] == ["a.py", os.path.join("pkg", "b.py")]


def test_unknown_discovery_setting_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SETTINGS, "DISCOVER_SOURCES", "everything")
    with pytest.raises(UsageError, match=r"SETTINGS\.DISCOVER_SOURCES is 'everything'"):
        info(experiment(tmp_path))


@pytest.mark.slow
def test_each_run_of_a_session_records_its_own_sources_and_packages(tmp_path: Path) -> None:
    # Two experiment files in one folder, run in one session: each run keeps its own file,
    # the local modules it imports and the expconf.py its config comes from, nothing else.
    root = write_project(
        tmp_path / "proj",
        {
            "expconf.py": "import expkit\n\n@expkit.config\ndef shared():\n    scale = 2\n",
            "exp_a.py": "import pluggy\nimport helper_a\n\ndef exp_a(scale):\n"
            "    return helper_a.VALUE * scale\n",
            "helper_a.py": "VALUE = 1\n",
            "exp_b.py": "from helper_b import VALUE\n\ndef exp_b(scale):\n"
            "    return VALUE * scale\n",
            "helper_b.py": "VALUE = 3\n",
        },
    )
    done = run_expkit("run", "exp_a.py", "exp_b.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {r["experiment"]["name"]: r for r in stored_runs(root / "runs")}
    a, b = runs["exp_a.py::exp_a"], runs["exp_b.py::exp_b"]
    assert [s[0] for s in a["experiment"]["sources"]] == ["exp_a.py", "expconf.py", "helper_a.py"]
    assert [s[0] for s in b["experiment"]["sources"]] == ["exp_b.py", "expconf.py", "helper_b.py"]
    assert any(d.startswith("pluggy==") for d in a["experiment"]["dependencies"])
    assert not any(d.startswith("pluggy==") for d in b["experiment"]["dependencies"])
    # What b recorded is enough to run it again.
    again = run_expkit("rerun", b["_dir"], "--check", cwd=root)
    assert again.returncode == 0, again.stdout + again.stderr


# --- dependencies -------------------------------------------------------------


def test_imported_packages_are_dependencies_with_their_installed_versions(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    # The experiment's own module imports pluggy, so pluggy must be found.
    write(tmp_path / "uses_pluggy.py", "import pluggy\nimport json\n")
    import_module(tmp_path, "uses_pluggy")

    deps = info(experiment(tmp_path))["dependencies"]

    versions = {d.name: d.version for d in deps}
    assert versions["pluggy"] == metadata.version("pluggy")
    assert versions["numpy"] == metadata.version("numpy")
    assert [d.name.lower() for d in deps] == sorted(d.name.lower() for d in deps)
    assert len({d.name for d in deps}) == len(deps)
    assert not {"os", "sys", "json", "subprocess"} & set(versions)


def test_a_package_imported_only_when_the_run_runs_is_a_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tinydb is one of expkit's own requirements; another test may have imported it.
    for name in [n for n in sys.modules if n == "tinydb" or n.startswith("tinydb.")]:
        monkeypatch.delitem(sys.modules, name)
    main = write(
        tmp_path / "exp_main.py",
        "def main():\n    import tinydb.table\n    import not_installed_abc\n",
    )
    deps = info(experiment(tmp_path, main))["dependencies"]
    versions = {d.name: d.version for d in deps}
    assert versions["tinydb"] == metadata.version("tinydb")
    assert "not_installed_abc" not in versions
    assert "tinydb" not in sys.modules  # found, not imported


def test_packages_only_other_packages_import_are_no_dependencies(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    # attrs is imported by expkit itself, but not by the experiment: Sacred leaves it out too.
    write(tmp_path / "plain.py", "import json\n")
    import_module(tmp_path, "plain")
    names = {d.name for d in info(experiment(tmp_path))["dependencies"]}
    assert "attrs" not in names
    assert "expkit" in names


def test_numpy_is_a_dependency_even_when_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SETTINGS, "DISCOVER_DEPENDENCIES", "none")
    deps = info(experiment(tmp_path))["dependencies"]
    assert deps == [Dependency("numpy", metadata.version("numpy"))]


def test_extra_dependencies_are_included_and_deduplicated(tmp_path: Path) -> None:
    extra = {
        Dependency("zzz-private-tool", "0.3"),
        Dependency("pluggy", metadata.version("pluggy")),
    }
    deps = info(experiment(tmp_path, extra_dependencies=extra))["dependencies"]
    assert deps[-1] == Dependency("zzz-private-tool", "0.3")
    assert sum(d.name == "pluggy" for d in deps) == 1


def test_local_packages_are_no_dependencies_but_a_venv_under_base_dir_is(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType]
) -> None:
    # A real installed distribution inside a virtualenv in the project folder.
    site = tmp_path / ".venv" / "lib" / "site-packages"
    write(tmp_path / ".venv" / "pyvenv.cfg", "home = /usr/bin\n")
    write(site / "venvdist_pkg" / "__init__.py", "")
    dist_info = site / "venvdist_pkg-1.2.3.dist-info"
    write(dist_info / "METADATA", "Metadata-Version: 2.1\nName: venvdist-pkg\nVersion: 1.2.3\n")
    write(dist_info / "top_level.txt", "venvdist_pkg\n")
    # A local package that happens to share its name with nothing installed.
    write(tmp_path / "localdep_pkg" / "__init__.py", "import venvdist_pkg\n")
    import_module(site, "venvdist_pkg")
    import_module(tmp_path, "localdep_pkg")
    sources._packages_distributions.cache_clear()
    try:
        result = info(experiment(tmp_path))
    finally:
        sources._packages_distributions.cache_clear()

    assert Dependency("venvdist-pkg", "1.2.3") in result["dependencies"]
    assert not any("localdep" in d.name for d in result["dependencies"])
    assert [s.name for s in result["sources"]] == [os.path.join("localdep_pkg", "__init__.py")]


@pytest.mark.parametrize("listing", ["top_level.txt", "RECORD"])
def test_a_package_named_unlike_its_distribution_is_found_by_the_files_it_installed(
    tmp_path: Path, import_module: Callable[[Path, str], ModuleType], listing: str
) -> None:
    # Wheels built by flit or hatchling have no top_level.txt: their RECORD says what is theirs.
    site = tmp_path / "site"
    write(site / "oddname_pkg" / "__init__.py", "")
    dist_info = site / "odd_dist-4.5.dist-info"
    write(dist_info / "METADATA", "Metadata-Version: 2.1\nName: odd-dist\nVersion: 4.5\n")
    if listing == "RECORD":
        write(
            dist_info / "RECORD",
            "oddname_pkg/__init__.py,sha256=47DEQpj8HBSa,0\n"
            "odd_dist-4.5.dist-info/METADATA,,\n"
            "../../bin/odd,sha256=x,10\n",
        )
    else:
        write(dist_info / "top_level.txt", "oddname_pkg\n")
    project = tmp_path / "project"
    write(project / "exp.py", "import oddname_pkg\n")
    import_module(site, "oddname_pkg")
    import_module(project, "exp")
    sources._packages_distributions.cache_clear()
    try:
        deps = info(experiment(project, project / "exp.py"))["dependencies"]
    finally:
        sources._packages_distributions.cache_clear()

    assert Dependency("odd-dist", "4.5") in deps


# --- git ----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with one commit holding ``exp.py``."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root / "exp.py", "print('hi')\n")
    git(root, "add", "exp.py")
    git(root, "commit", "-q", "-m", "first")
    return root


@needs_git
def test_clean_repository(repo: Path) -> None:
    result = info(experiment(repo, repo / "exp.py"))
    assert result["repositories"] == [
        Repository(
            url="git:/" + os.path.realpath(repo), commit=git(repo, "rev-parse", "HEAD"), dirty=False
        )
    ]


@needs_git
def test_untracked_files_do_not_make_a_repository_dirty(repo: Path) -> None:
    write(repo / "runs" / "1" / "run.json", "{}")
    [repository] = info(experiment(repo, repo / "exp.py"))["repositories"]
    assert repository.dirty is False


@needs_git
def test_rerun_sees_the_git_state_as_a_run_records_it(repo: Path) -> None:
    from expkit_plugins.rerun import git_state

    [recorded] = info(experiment(repo, repo / "exp.py"))["repositories"]
    write(repo / "runs" / "1" / "run.json", "{}")  # untracked, as a store in the work tree
    assert git_state(str(repo)) == {"commit": recorded.commit, "dirty": False}
    write(repo / "exp.py", "print('changed')\n")
    assert sources.repository_of(str(repo)).dirty is True


@needs_git
def test_changed_tracked_file_makes_a_repository_dirty(repo: Path) -> None:
    write(repo / "exp.py", "print('changed')\n")
    [repository] = info(experiment(repo, repo / "exp.py"))["repositories"]
    assert repository.dirty is True
    assert repository.commit == git(repo, "rev-parse", "HEAD")


@needs_git
def test_remote_url_is_recorded_with_its_password_redacted(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://alice:s3cret@example.com/team/exp.git")
    [repository] = info(experiment(repo, repo / "exp.py"))["repositories"]
    assert repository.url == "https://alice:***@example.com/team/exp.git"


@needs_git
def test_remote_url_without_password_is_kept(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "git@example.com:team/exp.git")
    [repository] = info(experiment(repo, repo / "exp.py"))["repositories"]
    assert repository.url == "git@example.com:team/exp.git"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@h.org/x", "https://u:***@h.org/x"),
        ("mongodb://admin:pw@db:27017/runs", "mongodb://admin:***@db:27017/runs"),
        ("https://h.org/x", "https://h.org/x"),
        ("https://token@h.org/x", "https://token@h.org/x"),
        ("/local/path", "/local/path"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert sources.redact_url(url) == expected


@needs_git
def test_repository_without_commits_has_no_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    main = write(tmp_path / "exp.py", "")
    [repository] = info(experiment(tmp_path, main))["repositories"]
    assert repository == Repository(
        url="git:/" + os.path.realpath(tmp_path), commit=None, dirty=False
    )


def test_no_repository_gives_no_entry(tmp_path: Path) -> None:
    main = write(tmp_path / "exp.py", "")
    assert info(experiment(tmp_path, main))["repositories"] == []


def test_broken_git_folder_gives_no_entry(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    main = write(tmp_path / "exp.py", "")
    assert info(experiment(tmp_path, main))["repositories"] == []


@needs_git
def test_git_missing_from_path_gives_no_entry(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert info(experiment(repo, repo / "exp.py"))["repositories"] == []


@needs_git
def test_save_git_info_false_runs_no_git(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_subprocess(monkeypatch)
    result = info(experiment(repo, repo / "exp.py", save_git_info=False))
    assert result["repositories"] == []
    assert calls == []


def spy_on_subprocess(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the commands ``subprocess.run`` starts while still running them."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(args))
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    return calls


@needs_git
def test_a_repository_is_probed_once_however_many_sources(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {str(write(repo / f"pkg{i % 3}" / f"mod{i}.py", f"i = {i}\n")) for i in range(30)}
    calls = spy_on_subprocess(monkeypatch)
    one = info(experiment(repo, repo / "exp.py"))["repositories"]
    calls_for_one = list(calls)
    calls.clear()

    many = info(experiment(repo, repo / "exp.py", extra_sources=extra))["repositories"]

    assert len(many) == 1
    assert many[0].url == one[0].url
    assert calls == calls_for_one
    assert len(calls) == len({tuple(c) for c in calls})  # no git command twice


@needs_git
def test_each_repository_of_the_sources_is_listed_once(tmp_path: Path, repo: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    lib = write(other / "lib.py", "")
    second = write(repo / "sub" / "second.py", "")
    exp = experiment(repo, repo / "exp.py", extra_sources={str(lib), str(second)})

    urls = sorted(r.url for r in info(exp)["repositories"])

    assert urls == sorted(["git:/" + os.path.realpath(repo), "git:/" + os.path.realpath(other)])


# --- through the plugin manager ---------------------------------------------


def test_plugin_answers_through_the_plugin_manager(tmp_path: Path) -> None:
    pm = create_plugin_manager()
    assert pm.get_plugin("sources") is sources
    main = write(tmp_path / "exp.py", "")
    results = pm.hook.expkit_experiment_info(experiment=experiment(tmp_path, main))
    ours = next(r for r in results if r and "sources" in r)
    assert [s.name for s in ours["sources"]] == ["exp.py"]
    assert {"sources", "dependencies", "repositories"} <= set(ours)


def test_a_module_replaced_under_its_name_is_the_one_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file collected again replaces its module under the same name; the packages a run
    # records come from the module as it is now, not from the one seen at an earlier run.
    base = str(tmp_path.resolve())
    (tmp_path / "exp_again.py").write_text("")
    first, second = ModuleType("exp_again"), ModuleType("exp_again")
    first.__file__ = second.__file__ = str(tmp_path / "exp_again.py")
    monkeypatch.setitem(sys.modules, "exp_again", first)
    [(module, local)] = [
        (m, loc) for n, m, _, loc in sources._imported_modules(base) if n == "exp_again"
    ]
    assert module is first and local
    monkeypatch.setitem(sys.modules, "exp_again", second)
    [module] = [m for n, m, _, _ in sources._imported_modules(base) if n == "exp_again"]
    assert module is second
