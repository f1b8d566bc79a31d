"""The plugin host: a pluggy manager that loads plugins the way pytest does.

Order: names blocked with ``-p no:NAME`` are blocked first; then the built-in
plugins (entry points shipped by the expkit distribution); then plugins named
with ``-p NAME``; then third-party entry points (unless
``EXPKIT_DISABLE_PLUGIN_AUTOLOAD`` is set); then modules listed in
``EXPKIT_PLUGINS``. ``expconf.py`` files are registered by the collector.

Plugins register under the entry-point group ``expkit``; those only the ``expkit``
command needs (its options, commands, collection, reporting) under ``expkit.command``,
which an experiment run from Python or its own command line never imports: start-up
counts.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from expkit import hookspec, installed
from expkit.errors import UsageError

hookimpl = pluggy.HookimplMarker("expkit")

ENTRY_POINT_GROUP = "expkit"
COMMAND_ENTRY_POINT_GROUP = "expkit.command"
_DIST_NAME = "expkit"


@attrs.frozen
class PluginInfo:
    """Where a loaded plugin came from and how long its import took."""

    name: str
    origin: str  # "builtin", "entrypoint", "-p", "env", "expconf", "object"
    module: str
    distribution: str | None = None
    version: str | None = None
    import_seconds: float = 0.0


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with expkit's hook specs and a record of where plugins came from."""

    def __init__(self) -> None:
        super().__init__("expkit")
        self.add_hookspecs(hookspec)
        # Historic: a plugin gets the call when it is registered, later ones included.
        self.hook.expkit_addhooks.call_historic(kwargs={"pluginmanager": self})
        self.infos: dict[str, PluginInfo] = {}

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """Also take unmarked ``expkit_*`` functions in ``expconf.py``, as pytest in conftests.

        As in pytest, only ``expkit_*`` names are hooks: the other names of a module (its
        imports, mostly) are not looked at, which keeps start-up fast.
        """
        if not name.startswith("expkit_"):
            return None
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None:
            module_name = getattr(plugin, "__name__", "")
            if module_name.startswith("expconf_") and callable(getattr(plugin, name, None)):
                opts = {
                    "wrapper": False,
                    "hookwrapper": False,
                    "optionalhook": False,
                    "tryfirst": False,
                    "trylast": False,
                    "specname": None,
                }
        return opts

    def register_module(
        self, modname: str, name: str | None = None, origin: str = "-p", **extra: Any
    ) -> Any:
        """Import ``modname`` and register it under ``name`` (default: the module name)."""
        name = name or modname
        if self.is_blocked(name) or self.has_plugin(name):
            return self.get_plugin(name)
        start = time.perf_counter()
        # An entry point may name an object in a module, and extras: "pkg.mod:plugin [extra]".
        module_name, _, attr = modname.partition("[")[0].partition(":")
        try:
            module = importlib.import_module(module_name.strip())
            for part in filter(None, attr.strip().split(".")):
                module = getattr(module, part)
        except (ImportError, AttributeError, ValueError) as exc:  # ValueError: "-p ''"
            raise UsageError(f"cannot load plugin {name!r}: {exc}") from exc
        seconds = time.perf_counter() - start
        if self.is_registered(module):
            return module  # loaded already under its entry-point name
        self.register(module, name=name)
        self.infos[name] = PluginInfo(
            name=name, origin=origin, module=modname, import_seconds=seconds, **extra
        )
        return module

    def load_entry_points(self, builtin_only: bool = False, command: bool = False) -> None:
        """Register the plugins of the ``expkit`` entry-point group (and, for the ``expkit``
        command, of ``expkit.command``): expkit's own, or only the others."""
        for ep in _entry_points(command):
            builtin = ep.dist.canonical_name == _DIST_NAME
            if builtin_only != builtin:
                continue
            self.register_module(  # blocked or loaded already: it does nothing
                ep.value,
                name=ep.name,
                origin="builtin" if builtin else "entrypoint",
                distribution=ep.dist.name,
                version=ep.dist.version,
            )

    def block(self, name: str) -> None:
        """Keep the plugin ``name`` from loading (``-p no:NAME``)."""
        self.set_blocked(name)
        # Users write the module name as often as the entry-point name.
        for ep in _entry_points(command=True):
            if ep.value == name or ep.value.rsplit(".", 1)[-1] == name:
                self.set_blocked(ep.name)

    def register_named(self, names: Iterable[str], origin: str = "-p") -> None:
        """Register plugins by entry-point name or module name (``-p NAME``)."""
        names = list(names)
        eps = _entry_points(command=True)
        known = {ep.name for ep in eps}
        for modname in names:
            if modname not in known:
                self.register_module(modname, origin=origin)
        for ep in eps:
            if ep.name in names:
                dist = ep.dist
                self.register_module(
                    ep.value,
                    name=ep.name,
                    origin=origin,
                    distribution=dist.name,
                    version=dist.version,
                )


def _entry_points(command: bool = False) -> list[installed.EntryPoint]:
    groups = (ENTRY_POINT_GROUP, COMMAND_ENTRY_POINT_GROUP) if command else (ENTRY_POINT_GROUP,)
    return [ep for group in groups for ep in installed.entry_points(group)]


def builtin_plugin_modules() -> list[str]:
    """The modules of expkit's own plugins, those of the ``expkit`` command included."""
    return [ep.value for ep in _entry_points(command=True) if ep.dist.canonical_name == _DIST_NAME]


def create_plugin_manager(
    blocked: Iterable[str] = (),
    early: Iterable[str] = (),
    plugins: Iterable[Any] = (),
    command: bool = False,
) -> PluginManager:
    """Build a manager with every plugin loaded in pytest's order.

    ``command=True`` is the ``expkit`` command's manager: it loads ``expkit.command`` too.
    """
    pm = PluginManager()
    for name in blocked:
        pm.block(name)
    pm.load_entry_points(builtin_only=True, command=command)
    pm.register_named(early, origin="-p")
    if not os.environ.get("EXPKIT_DISABLE_PLUGIN_AUTOLOAD"):
        pm.load_entry_points(builtin_only=False, command=command)
    for modname in filter(None, os.environ.get("EXPKIT_PLUGINS", "").split(",")):
        pm.register_module(modname.strip(), origin="env")
    for plugin in plugins:
        name = pm.register(plugin)
        if name is not None:
            pm.infos[name] = PluginInfo(name=name, origin="object", module=type(plugin).__name__)
    return pm


_default: PluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The manager used by experiments run from Python or from their own command line."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = create_plugin_manager()
    return _default


def set_plugin_manager(pm: PluginManager | None) -> PluginManager | None:
    """Make ``pm`` the default manager (``None`` resets it); returns the previous one."""
    global _default
    previous, _default = _default, pm
    return previous


__all__ = [
    "COMMAND_ENTRY_POINT_GROUP",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "builtin_plugin_modules",
    "create_plugin_manager",
    "get_plugin_manager",
    "hookimpl",
    "set_plugin_manager",
]
