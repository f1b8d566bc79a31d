"""What code a run ran: its source files, the packages it imported and the git state.

Sources are the main file, the imported modules under the experiment's base
dir and the files added with ``add_source_file``. Dependencies are the
installed distributions behind the imported top-level packages. Repositories
are probed with the ``git`` command, once per repository and run; anything
that goes wrong there leaves the repository out and never stops the run.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from expkit import installed
from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl
from expkit.records import Dependency, Repository, Source
from expkit.settings import SETTINGS
from expkit.utils import file_md5, redact_url

if TYPE_CHECKING:
    import subprocess

_BLOCK_SIZE = 1 << 20
_GIT_TIMEOUT = 5.0
# Folders whose files are installed or generated code, never the user's sources.
_EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_SOURCE_MODES = ("none", "imported", "sys", "dir")
_DEPENDENCY_MODES = ("none", "imported", "sys", "pkg")

_repo_root_cache: dict[str, str | None] = {}


@hookimpl
def expkit_experiment_info(experiment: Any) -> dict:
    """The experiment's sources, dependencies and (when asked) git repositories."""
    sources = gather_sources(experiment.base_dir, experiment.mainfile, experiment.extra_sources)
    dependencies = gather_dependencies(experiment.base_dir, experiment.extra_dependencies)
    repositories = gather_repositories(s.path for s in sources) if experiment.save_git_info else []
    return {"sources": sources, "dependencies": dependencies, "repositories": repositories}


def md5_of(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file's content (see :func:`expkit.utils.file_md5`)."""
    return file_md5(path)


# --- sources ----------------------------------------------------------------


def gather_sources(
    base_dir: str, mainfile: str | None, extra_sources: Iterable[str] = ()
) -> list[Source]:
    """Sources of an experiment under ``base_dir``, sorted by name."""
    mode = _setting_mode("DISCOVER_SOURCES", _SOURCE_MODES)
    base = _real(base_dir)
    paths: set[str] = set()
    if mainfile is not None and os.path.isfile(mainfile):
        paths.add(_real(mainfile))
    if mode in ("imported", "sys"):
        paths.update(_imported_local_files(base))
    elif mode == "dir":
        paths.update(_local_files_in(base))
    for extra in extra_sources:
        if not os.path.isfile(extra):
            raise UsageError(f"source file {extra!r} does not exist")
        paths.add(_real(extra))
    sources = [Source(name=_relname(p, base), md5=md5_of(p), path=p) for p in paths]
    return sorted(sources, key=lambda s: s.name)


def _imported_local_files(base: str) -> set[str]:
    found = set()
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or not filename.endswith(".py"):
            continue
        if not _is_local(_in_real_folder(filename), base):
            continue
        path = _real(filename)
        if _is_local(path, base) and os.path.isfile(path):
            found.add(path)
    return found


def _local_files_in(base: str) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(base):
        # Prune hidden folders (.git, .tox) and installed code while walking.
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and not _is_installed_folder(os.path.join(dirpath, d))
        ]
        found.update(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    return found


def _is_local(path: str, base: str) -> bool:
    """Whether ``path`` (a real path) is user code under ``base`` rather than installed code."""
    if not _is_under(path, base):
        return False
    # Only the folders below base count: a project may itself live under /usr.
    folder = os.path.dirname(path)
    while folder != base and _is_under(folder, base):
        if _is_installed_folder(folder):
            return False
        folder = os.path.dirname(folder)
    return True


@functools.lru_cache(maxsize=4096)
def _is_installed_folder(folder: str) -> bool:
    """Whether ``folder`` holds installed or generated code: site-packages, a virtualenv, ..."""
    if os.path.basename(folder) in _EXCLUDED_PARTS:
        return True
    if folder in _install_prefixes():
        return True
    return os.path.isfile(os.path.join(folder, "pyvenv.cfg"))


@functools.cache
def _install_prefixes() -> tuple[str, ...]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return tuple(_real(p) for p in prefixes)


@functools.lru_cache(maxsize=16384)
def _real(path: str) -> str:
    return os.path.realpath(path)


def _in_real_folder(path: str) -> str:
    """``path`` with its symlinks resolved: one ``realpath`` per folder, not per file.

    Hundreds of modules share a few dozen folders. A file that is a symlink itself
    (``flit install --symlink`` of a one-module project) is resolved whole.
    """
    folder, name = os.path.split(path)
    real = os.path.join(_real(folder), name)
    return _real(real) if os.path.islink(real) else real


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _relname(path: str, base: str) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows: no relative path exists
        return path


# --- dependencies -----------------------------------------------------------


def gather_dependencies(
    base_dir: str, extra_dependencies: Iterable[Dependency] = ()
) -> list[Dependency]:
    """Installed distributions the process imported from outside ``base_dir``, sorted by name."""
    mode = _setting_mode("DISCOVER_DEPENDENCIES", _DEPENDENCY_MODES)
    found: set[Dependency] = set(extra_dependencies)
    if mode in ("imported", "sys"):
        base = _real(base_dir)
        tops = _imported_top_level(base)
        if mode == "imported":
            # What the experiment's own modules import, not what their imports import.
            tops &= _referenced_top_level(base) | {"expkit"}
        for top in tops:
            for dist in _distributions_of(top):
                version = _version(dist)
                if version is not None:
                    found.add(Dependency(name=dist, version=version))
    elif mode == "pkg":
        for dist in installed.distributions().values():
            if dist.version is not None:
                found.add(Dependency(name=dist.name, version=dist.version))
    numpy_version = _version("numpy")
    if numpy_version is not None:
        found.add(Dependency(name="numpy", version=numpy_version))
    return sorted(found, key=lambda d: (d.name.lower(), d.version))


def _imported_top_level(base: str) -> set[str]:
    skip = sys.stdlib_module_names | set(sys.builtin_module_names) | {"__main__", "__mp_main__"}
    tops = set()
    for name, module in list(sys.modules.items()):
        # Private top-level modules (_distutils_hack, editable-install finders) come
        # from .pth files or stand behind a public package that is imported too.
        if "." in name or name.startswith("_") or name in skip or module is None:
            continue
        location = _location(module)
        if location is not None and _is_local(_in_real_folder(location), base):
            continue
        tops.add(name)
    return tops


def _referenced_top_level(base: str) -> set[str]:
    """Top-level packages named in the globals of the local modules (under ``base``)."""
    tops = set()
    for module in list(sys.modules.values()):
        location = _location(module) if module is not None else None
        if location is None or not _is_local(_in_real_folder(location), base):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                name = value.__name__
            else:
                name = getattr(value, "__module__", None)
                if not isinstance(name, str) or isinstance(value, (str, bytes)):
                    continue
            tops.add(name.split(".", 1)[0])
    return tops


def _location(module: Any) -> str | None:
    filename = getattr(module, "__file__", None)
    if isinstance(filename, str):
        return filename
    # A namespace package has no file, only the folders it spans.
    for folder in getattr(module, "__path__", None) or ():
        return str(folder)
    return None


@functools.cache
def _distributions_of(top: str) -> list[str]:
    """The installed distributions that provide the top-level package ``top``."""
    # Most distributions are named like their package (numpy, pluggy): asking for that name
    # reads one folder, where mapping every installed distribution reads them all.
    for name in dict.fromkeys((top, top.replace("_", "-"))):
        dist = installed.distribution(name)
        if dist is None:
            continue
        declared = (dist.read_text("top_level.txt") or "").split()
        if not declared or top in declared:
            return [dist.name]
    return _packages_distributions().get(top, [])


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    # Reads every installed distribution's file list (~0.1 s): only for packages not named
    # like their distribution (sklearn, yaml), once per process.
    from importlib import metadata

    return {
        top: list(dict.fromkeys(dists)) for top, dists in metadata.packages_distributions().items()
    }


def _version(dist: str) -> str | None:
    return installed.version(dist)


def _setting_mode(name: str, allowed: tuple[str, ...]) -> str:
    mode = getattr(SETTINGS, name)
    if mode not in allowed:
        raise UsageError(f"SETTINGS.{name} is {mode!r}; expected one of {', '.join(allowed)}")
    return mode


# --- git --------------------------------------------------------------------


def gather_repositories(paths: Iterable[str]) -> list[Repository]:
    """The git state of every repository holding one of ``paths``, each probed once."""
    roots = dict.fromkeys(
        r for r in (_repo_root(os.path.dirname(os.path.abspath(p))) for p in paths) if r
    )
    repositories = (_probe(root) for root in roots)
    return list(dict.fromkeys(r for r in repositories if r is not None))


def repository_of(folder: str) -> Repository | None:
    """The git state of the work tree holding ``folder``, as a run records it, or ``None``."""
    root = _repo_root(os.path.abspath(folder))
    return None if root is None else _probe(root)


def _repo_root(folder: str) -> str | None:
    """The work tree holding ``folder``: the nearest folder from it up with a ``.git``."""
    visited = []
    root: str | None = None
    while True:
        if folder in _repo_root_cache:
            root = _repo_root_cache[folder]
            break
        visited.append(folder)
        # .git is a folder in a plain clone and a file in worktrees and submodules.
        if os.path.exists(os.path.join(folder, ".git")):
            root = folder
            break
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for seen in visited:
        _repo_root_cache[seen] = root
    return root


def _probe(root: str) -> Repository | None:
    """``root``'s remote, commit and dirty flag, or ``None`` when git cannot tell."""
    # One status call gives both the commit ("# branch.oid") and the changes.
    # Untracked files do not count as changes, as in Sacred (GitPython's
    # is_dirty()): a store writing ./runs into the work tree must not make
    # every later run dirty.
    status = _git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None or status.returncode != 0:
        return None
    commit = None
    dirty = False
    for line in status.stdout.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2].strip()
            commit = None if oid == "(initial)" else oid
        elif line and not line.startswith("#"):
            dirty = True
    remote = _git(root, "config", "--get", "remote.origin.url")
    if remote is not None and remote.returncode == 0 and remote.stdout.strip():
        url = redact_url(remote.stdout.strip())
    else:
        url = "git:/" + root
    return Repository(url=url, commit=commit, dirty=dirty)


def _git(root: str, *args: str) -> subprocess.CompletedProcess[str] | None:
    import subprocess  # only for experiments in a git work tree

    # GIT_OPTIONAL_LOCKS=0: status must not take the index lock from a git the user runs.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(
            ["git", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
