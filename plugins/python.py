"""Collecting experiments from Python files: ``exp_*`` functions and ``Experiment`` objects.

Each file is imported once, with its folder on ``sys.path`` (as pytest's default
import mode does), after the ``expconf.py`` files from the project root down to
its folder; those are registered as local plugins, so their hook functions work.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from expkit.experiment import Experiment
from expkit.module import ModuleExperiment, ModuleParts, module_parts
from expkit.nodes import CollectError, Item
from expkit.pluginmanager import PluginInfo, hookimpl
from expkit.tracebacks import format_user_traceback

EXPCONF = "expconf.py"

_expconfs: dict[Path, tuple[types.ModuleType, ModuleParts]] = {}


def nodeid_of(path: Path, rootdir: Path) -> str:
    """``sub/exp_x.py``: the (resolved) path relative to the root, or absolute outside it."""
    try:
        return path.relative_to(_resolved(rootdir)).as_posix()
    except ValueError:
        return path.as_posix()


@functools.lru_cache(maxsize=256)
def _resolved(folder: Path) -> Path:
    # The root and the folders of the files: shared by many files, resolved once each.
    return folder.resolve()


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles an experiment file from its text at every import.

    Python's bytecode cache checks a source's mtime in whole seconds and its size only: a
    file rewritten within the same second at the same size would run as the old version
    while the run records the new text. The run's file is what it records, as with
    ``python exp.py``, whose main file is never cached either.
    """

    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


def _import_file(path: Path, name: str) -> types.ModuleType:
    loader = _SourceLoader(name, str(path))
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, path, loader=loader)
    )
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _module_name(path: Path) -> str:
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        digest = hashlib.md5(str(path).encode()).hexdigest()[:8]
        name = f"{name}_{digest}"
    return name


def _user_traceback(exc: BaseException) -> str:
    lines = format_user_traceback(exc, hide=("importlib",))
    return "".join(lines[1:])


def expconf_parts(directory: Path, rootdir: Path, pm: Any) -> list[ModuleParts]:
    """The parts of the ``expconf.py`` files from the root down to ``directory``."""
    directory = _resolved(directory)
    root = _resolved(rootdir)
    folders = [directory, *directory.parents]
    if root in folders:
        folders = folders[: folders.index(root) + 1]
    else:
        folders = [directory]
    parts = []
    for folder in reversed(folders):
        conf = folder / EXPCONF
        if not conf.is_file():
            continue
        if conf not in _expconfs:
            name = "expconf_" + hashlib.md5(str(conf).encode()).hexdigest()[:8]
            module = _import_file(conf, name)
            _expconfs[conf] = (module, module_parts(module))
        module, part = _expconfs[conf]
        plugin_name = f"expconf:{conf}"
        if not pm.has_plugin(plugin_name) and not pm.is_registered(module):
            pm.register(module, name=plugin_name)
            pm.infos[plugin_name] = PluginInfo(plugin_name, "expconf", str(conf))
        parts.append(part)
    return parts


@hookimpl(trylast=True)
def expkit_collect_file(path: Path, config: Any) -> list | None:
    if path.suffix != ".py" or path.name == EXPCONF:
        return None
    path = path.resolve()
    pm = config.pluginmanager
    file_id = nodeid_of(path, config.rootdir)
    try:
        parts = expconf_parts(path.parent, config.rootdir, pm)
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module = _import_file(path, _module_name(path))
    except (Exception, SystemExit) as exc:
        return [CollectError(file_id, path, _user_traceback(exc))]
    parts.append(module_parts(module))
    items: list[Item] = []
    patterns = config.settings.function_patterns
    for attr, value in list(vars(module).items()):
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            if not any(fnmatch.fnmatchcase(attr, p) for p in patterns):
                continue
            nodeid = f"{file_id}::{attr}"
            try:
                experiment: Any = ModuleExperiment(value, nodeid, parts, plugin_manager=pm)
            except Exception as exc:
                items.append(CollectError(nodeid, path, _user_traceback(exc)))  # type: ignore[arg-type]
                continue
            items.append(_item(nodeid, path, attr, experiment))
        elif isinstance(value, Experiment) and not isinstance(value, ModuleExperiment):
            if value.mainfile and Path(value.mainfile).resolve() != path:
                continue  # imported from another file: collected there
            value._plugin_manager = pm
            nodeid = f"{file_id}::{value.name}"
            items.append(_item(nodeid, path, value.name, value))
    return items


def _item(nodeid: str, path: Path, name: str, experiment: Any) -> Item:
    keywords = frozenset({nodeid, path.name, name, *nodeid.split("::")[0].split("/")})
    return Item(nodeid=nodeid, path=path, name=name, experiment=experiment, keywords=keywords)
