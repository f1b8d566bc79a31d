"""What code a run ran: its source files, the packages it imported and the git state.

Sources are the main file, the imported modules under the experiment's base
dir and the files added with ``add_source_file``. Dependencies are the
installed distributions behind the imported top-level packages. Repositories
are probed with the ``git`` command, once per repository and run; anything
that goes wrong there leaves the repository out and never stops the run.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import types
from collections.abc import Iterable
from importlib.machinery import ModuleSpec, PathFinder
from typing import TYPE_CHECKING, Any

from expkit import installed
from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl
from expkit.records import Dependency, Repository, Source
from expkit.settings import SETTINGS
from expkit.utils import file_md5, is_under, redact_url

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
    sources = gather_sources(
        experiment.base_dir,
        experiment.mainfile,
        experiment.extra_sources,
        defining_files(experiment),
    )
    # Packages the experiment's own modules import; without a main file, every local module's.
    own = {s.path for s in sources} if experiment.mainfile else None
    dependencies = gather_dependencies(experiment.base_dir, experiment.extra_dependencies, own)
    repositories = gather_repositories(s.path for s in sources) if experiment.save_git_info else []
    return {"sources": sources, "dependencies": dependencies, "repositories": repositories}


def md5_of(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file's content (see :func:`expkit.utils.file_md5`)."""
    return file_md5(path)


# --- sources ----------------------------------------------------------------


def gather_sources(
    base_dir: str,
    mainfile: str | None,
    extra_sources: Iterable[str] = (),
    defining: Iterable[str] = (),
) -> list[Source]:
    """Sources of an experiment under ``base_dir``, sorted by name.

    ``defining`` are the files that define the experiment's parts besides its main file
    (``expconf.py``, ingredients): with the main file, where the search for imports starts.
    """
    mode = _setting_mode("DISCOVER_SOURCES", _SOURCE_MODES)
    base = _real(base_dir)
    paths: set[str] = set()
    if mainfile is not None and os.path.isfile(mainfile):
        paths.add(_real(mainfile))
    if mode == "imported" and mainfile is not None:
        paths.update(_imported_by(base, [mainfile, *defining]))
    elif mode in ("imported", "sys"):
        # Without a main file (an interactive experiment) nothing says what it imports.
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
    return set(_local_modules(base).values())


def _local_modules(base: str) -> dict[str, str]:
    """``{module name: real path}`` of every imported module that is a local file."""
    found = {}
    for name, module, _, local in _imported_modules(base):
        filename = getattr(module, "__file__", None)
        if not local or not isinstance(filename, str) or not filename.endswith(".py"):
            continue
        path = _real(filename)
        if _is_local(path, base) and os.path.isfile(path):
            found[name] = path
    return found


# (id of a module, base) -> (the module, its location, whether it is local under base)
_module_places: dict[tuple[int, str], tuple[Any, str | None, bool]] = {}


def _imported_modules(base: str) -> list[tuple[str, Any, str | None, bool]]:
    """``(name, module, location, is local)`` of every module in ``sys.modules``.

    Where each module lives is worked out once per module object: a worker or a study
    running many points in one process asks at every run, over a thousand modules.
    """
    if len(_module_places) > 4 * len(sys.modules) + 1000:
        _module_places.clear()  # modules dropped from sys.modules are not kept alive for ever
    found = []
    for name, module in list(sys.modules.items()):
        key = (id(module), base)
        place = _module_places.get(key)
        if place is None or place[0] is not module:  # new, or an id reused by another
            location = _location(module) if module is not None else None
            local = location is not None and _is_local(_in_real_folder(location), base)
            place = _module_places[key] = (module, location, local)
        found.append((name, module, place[1], place[2]))
    return found


def defining_files(experiment: Any) -> set[str]:
    """The files defining the functions and config scopes of the experiment and its ingredients.

    Config scopes and fixtures from ``expconf.py`` and functions registered from another
    file reach an experiment without its file importing them.
    """
    files = set()
    walk = getattr(experiment, "traverse_ingredients", None)
    for ingredient, _ in walk() if walk is not None else ():
        parts = [
            *ingredient.configurations,
            *ingredient.named_configs.values(),
            *ingredient.config_hooks,
            *ingredient.pre_run_hooks,
            *ingredient.post_run_hooks,
            *ingredient.captured_functions,
            *ingredient.commands.values(),
            *(f.function for f in (getattr(ingredient, "fixtures", None) or {}).values()),
            getattr(ingredient, "function", None),  # a module experiment's exp_* function
        ]
        if ingredient.mainfile:
            files.add(ingredient.mainfile)
        for part in parts:
            code = getattr(inspect.unwrap(getattr(part, "func", part)), "__code__", None)
            if code is not None:
                files.add(code.co_filename)
    return files


def _imported_by(base: str, files: Iterable[str]) -> set[str]:
    """The local modules ``files`` import, directly or through other local modules.

    Read from their ``import`` statements, so that the modules another experiment of the
    same session imported are not this one's. A module not imported yet (a function
    imports it when called) is found where the import system would find it, unrun: the
    rerun needs its source as much as the others'.
    """
    modules = _local_modules(base)
    packages = {path: _package_of(sys.modules.get(name)) for name, path in modules.items()}
    found: set[str] = set()
    todo = [_real(f) for f in files if _is_local(_real(f), base) and os.path.isfile(f)]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        for name in _import_names(path, packages.get(path, "")):
            for prefix in _prefixes(name):
                if prefix in modules:
                    todo.append(modules[prefix])
                elif prefix not in sys.modules:
                    spec = _unimported_spec(prefix)
                    if spec is None:
                        break  # nor its submodules
                    local = _local_origin(spec, base)
                    if local is not None:
                        modules[prefix] = local
                        packages[local] = spec.parent
                        todo.append(local)
    return found


def _unimported_spec(name: str) -> ModuleSpec | None:
    """Where the module ``name``, not imported yet, would be imported from; nothing is run.

    Its parent packages are imported already, or are looked for the same way.
    """
    parent, _, _ = name.rpartition(".")
    if not parent:
        search = None  # sys.path
    elif parent in sys.modules:
        search = getattr(sys.modules[parent], "__path__", None)
        if search is None:
            return None  # a plain module: what follows its name is a name in it
    else:
        spec = _unimported_spec(parent)
        search = None if spec is None else spec.submodule_search_locations
        if search is None:
            return None
    try:
        return PathFinder.find_spec(name, None if search is None else list(search))
    except (ImportError, ValueError, OSError):
        return None


def _local_origin(spec: ModuleSpec, base: str) -> str | None:
    origin = spec.origin
    if not isinstance(origin, str) or not origin.endswith(".py") or not os.path.isfile(origin):
        return None  # a namespace package, or compiled code
    path = _real(origin)
    return path if _is_local(path, base) else None


def _package_of(module: Any) -> str:
    spec = getattr(module, "__spec__", None)
    return (
        (getattr(spec, "parent", None) or getattr(module, "__package__", None) or "")
        if module
        else ""
    )


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


_import_cache: dict[tuple[str, str], tuple[tuple[int, int], list[str]]] = {}


def _import_names(path: str, package: str) -> list[str]:
    """The absolute names of the modules ``path`` imports anywhere (and the names it takes
    from them, which may be submodules); the file is read again only when it changed."""
    try:
        stat = os.stat(path)
    except OSError:
        return []
    key, stamp = (path, package), (stat.st_mtime_ns, stat.st_size)
    cached = _import_cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module or "", node.level, package)
            if module is None:
                continue
            if module:
                names.append(module)
            names.extend(f"{module}.{a.name}" if module else a.name for a in node.names)
    _import_cache[key] = (stamp, names)
    return names


def _absolute(module: str, level: int, package: str) -> str | None:
    """The absolute name of ``from .module import`` (``level`` dots) inside ``package``."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or not parts:
        return None
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


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
    if not is_under(path, base):
        return False
    # Only the folders below base count: a project may itself live under /usr.
    folder = os.path.dirname(path)
    while folder != base and is_under(folder, base):
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


@functools.lru_cache(maxsize=16384)
def _in_real_folder(path: str) -> str:
    """``path`` with its symlinks resolved: one ``realpath`` per folder, not per file.

    Hundreds of modules share a few dozen folders. A file that is a symlink itself
    (``flit install --symlink`` of a one-module project) is resolved whole. Cached: a
    worker that runs many points asks again for the same modules at every run.
    """
    folder, name = os.path.split(path)
    real = os.path.join(_real(folder), name)
    return _real(real) if os.path.islink(real) else real


def _relname(path: str, base: str) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows: no relative path exists
        return path


# --- dependencies -----------------------------------------------------------


def gather_dependencies(
    base_dir: str,
    extra_dependencies: Iterable[Dependency] = (),
    own_files: Iterable[str] | None = None,
) -> list[Dependency]:
    """Installed distributions the process imported from outside ``base_dir``, sorted by name.

    With ``own_files`` (the experiment's sources) only the packages those modules use
    count, not the ones of other local modules imported in the same process.
    """
    mode = _setting_mode("DISCOVER_DEPENDENCIES", _DEPENDENCY_MODES)
    found: set[Dependency] = set(extra_dependencies)
    if mode in ("imported", "sys"):
        base = _real(base_dir)
        tops = _imported_top_level(base)
        if mode == "imported":
            # What the experiment's own modules import, not what their imports import.
            own = None if own_files is None else set(own_files)
            tops &= _referenced_top_level(base, own) | {"expkit"}
            if own is not None:
                tops |= _not_imported_yet(own)
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
    for name, module, _, local in _imported_modules(base):
        # Private top-level modules (_distutils_hack, editable-install finders) come
        # from .pth files or stand behind a public package that is imported too.
        if "." in name or name.startswith("_") or name in skip or module is None or local:
            continue
        tops.add(name)
    return tops


def _not_imported_yet(files: Iterable[str]) -> set[str]:
    """Top-level packages ``files`` import inside functions that have not run yet."""
    skip = sys.stdlib_module_names | set(sys.builtin_module_names)
    tops = set()
    for path in files:
        for name in _import_names(path, ""):  # "": relative imports are local, left out
            top = name.partition(".")[0]
            if top and top not in sys.modules and top not in skip and not top.startswith("_"):
                tops.add(top)
    return tops


def _referenced_top_level(base: str, own: set[str] | None = None) -> set[str]:
    """Top-level packages named in the globals of the local modules (under ``base``).

    ``own``: only the modules with these (real) files count.
    """
    tops = set()
    for _, module, location, local in _imported_modules(base):
        if not local:
            continue
        if own is not None and _real(location) not in own:
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
    return list(dict.fromkeys(d.name for d in _packages_distributions().get(top, ())))


@functools.cache
def _packages_distributions() -> dict[str, list[installed.Distribution]]:
    # Every installed distribution's top-level packages, for those not named like their
    # distribution (sklearn, yaml, expkit_plugins), once per process. Their top_level.txt or
    # RECORD is read directly: importlib.metadata.packages_distributions() parses every
    # METADATA too, 0.25 s on a venv of 200 packages, paid by the first run of each process.
    found: dict[str, list[installed.Distribution]] = {}
    for dist in installed.distributions().values():
        for top in _top_levels(dist):
            found.setdefault(top, []).append(dist)
    return found


def _top_levels(dist: installed.Distribution) -> set[str]:
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    # Without top_level.txt (flit, hatchling, poetry): the first part of each installed path.
    tops = set()
    for line in (dist.read_text("RECORD") or "").splitlines():
        path = line.rsplit(",", 2)[0].strip('"')
        first, sep, _ = path.partition("/")
        if not sep:
            first = inspect.getmodulename(first) or first
        if first and "." not in first and first != "__pycache__":
            tops.add(first)
    return tops


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
