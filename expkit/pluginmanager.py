"""The plugin host: a pluggy manager that loads plugins the way pytest does.

Order: names blocked with ``-p no:NAME`` are blocked first; then the built-in
plugins (entry points of the ``expkit`` group shipped by the expkit
distribution; those in ``COMMAND_PLUGINS`` only for the ``expkit`` command);
then plugins named with ``-p NAME``; then third-party entry points (unless
``EXPKIT_DISABLE_PLUGIN_AUTOLOAD`` is set); then modules listed in
``EXPKIT_PLUGINS``. ``expconf.py`` files are registered by the collector.
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
_DIST_NAME = "expkit"
# Built-in plugins whose hooks only the `expkit` command calls (options, collection, the
# session, its report, the runs commands). An experiment run from Python or from its own
# command line never calls them, so its manager does not import them: start-up counts.
COMMAND_PLUGINS = frozenset(
    {
        "python",
        "session",
        "selection",
        "terminal",
        "helpconfig",
        "runs",
        "rerun",
        "sync",
        "sweep",
        "workers",
        "dask",
        "progress",
        "tune",
    }
)


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
        """Also take unmarked ``expkit_*`` functions in ``expconf.py``, as pytest in conftests."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("expkit_"):
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
        except (ImportError, AttributeError) as exc:
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
        """Register the plugins of the ``expkit`` entry-point group.

        ``command=False`` leaves out the built-in ``COMMAND_PLUGINS``.
        """
        for ep in _entry_points():
            builtin = ep.dist.canonical_name == _DIST_NAME
            if builtin_only != builtin or (builtin and not command and ep.name in COMMAND_PLUGINS):
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
        for ep in _entry_points():
            if ep.value == name or ep.value.rsplit(".", 1)[-1] == name:
                self.set_blocked(ep.name)


def _entry_points() -> list[installed.EntryPoint]:
    return installed.entry_points(ENTRY_POINT_GROUP)


def create_plugin_manager(
    blocked: Iterable[str] = (),
    early: Iterable[str] = (),
    plugins: Iterable[Any] = (),
    command: bool = False,
) -> PluginManager:
    """Build a manager with every plugin loaded in pytest's order.

    ``command=True`` is the ``expkit`` command's manager: it loads ``COMMAND_PLUGINS`` too.
    """
    pm = PluginManager()
    for name in blocked:
        pm.block(name)
    pm.load_entry_points(builtin_only=True, command=command)
    early = list(early)
    eps = _entry_points()
    names = {ep.name for ep in eps}
    for modname in early:
        if modname not in names:
            pm.register_module(modname, origin="-p")
    for ep in eps:
        if ep.name in early:
            dist = ep.dist
            pm.register_module(
                ep.value, name=ep.name, origin="-p", distribution=dist.name, version=dist.version
            )
    if not os.environ.get("EXPKIT_DISABLE_PLUGIN_AUTOLOAD"):
        pm.load_entry_points(builtin_only=False)
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
    "COMMAND_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "create_plugin_manager",
    "get_plugin_manager",
    "hookimpl",
    "set_plugin_manager",
]
