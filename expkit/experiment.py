"""Ingredients and experiments: where config, captured functions and commands are declared."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from expkit.captured import capture as _capture
from expkit.captured import captured_state
from expkit.configuration import ConfigDict, ConfigScope, load_config_file
from expkit.errors import CircularDependencyError, ExpkitError
from expkit.records import Dependency
from expkit.run import Run, create_run
from expkit.utils import is_under

if TYPE_CHECKING:
    from expkit.pluginmanager import PluginManager


# PEP 440 versions: epoch, release, pre-, post- and dev-release, local part. A string, not
# compiled here: every experiment imports this module, few declare package versions.
_VERSION = (
    r"^v?(\d+!)?\d+(\.\d+)*([-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?\d*)?"
    r"((-\d+)|([-_.]?(post|rev|r)[-_.]?\d*))?([-_.]?dev[-_.]?\d*)?(\+[a-z0-9]+([-_.][a-z0-9]+)*)?$"
)


class Ingredient:
    """A reusable part of an experiment with its own config, captured functions and commands."""

    is_experiment = False

    def __init__(
        self,
        path: str,
        ingredients: Sequence[Ingredient] = (),
        interactive: bool = False,
        _caller_globals: dict | None = None,
        base_dir: str | os.PathLike | None = None,
        save_git_info: bool = True,
    ) -> None:
        caller = _caller_globals if _caller_globals is not None else globals_of_caller()
        self.path = path
        self.ingredients = list(ingredients)
        self.interactive = interactive
        mainfile = caller.get("__file__")
        if mainfile is None and not interactive and caller.get("__name__") == "__main__":
            raise RuntimeError(
                f"Defining {type(self).__name__.lower()} {path!r} interactively: its source cannot "
                f"be saved; pass interactive=True to do it anyway"
            )
        self.mainfile = os.path.abspath(mainfile) if mainfile else None
        default_dir = os.path.dirname(self.mainfile) if self.mainfile else os.getcwd()
        self.base_dir = os.path.abspath(os.fspath(base_dir)) if base_dir else default_dir
        self.doc = caller.get("__doc__")
        self.save_git_info = save_git_info
        self.configurations: list[ConfigScope | ConfigDict] = []
        self.named_configs: dict[str, ConfigScope | ConfigDict | str] = {}
        self.config_hooks: list[Callable] = []
        self.pre_run_hooks: list[Callable] = []
        self.post_run_hooks: list[Callable] = []
        self.captured_functions: list[Callable] = []
        self.commands: dict[str, Callable] = {}
        self.extra_sources: set[str] = set()
        self.extra_dependencies: set[Dependency] = set()
        self.logger = None

    @property
    def config_path(self) -> str:
        """Where this ingredient's entries live in a run's config ("" for the experiment)."""
        return self.path

    # --- decorators ---------------------------------------------------------------

    def config(self, function: Callable) -> ConfigScope:
        """Decorator: the function's local variables become config entries."""
        scope = ConfigScope(function)
        self.configurations.append(scope)
        return scope

    def named_config(self, function: Callable) -> ConfigScope:
        """Decorator: a config scope applied only when asked for by name (``with NAME``)."""
        scope = ConfigScope(function)
        self._add_named(function.__name__, scope)
        return scope

    def capture(self, function: Callable | None = None, prefix: str | None = None) -> Any:
        """Decorator: fill the function's parameters from the config; ``prefix`` picks a subtree."""
        if function is None:
            return lambda f: self.capture(f, prefix=prefix)
        if hasattr(function, "__expkit_captured__"):
            return function
        captured = _capture(function, self, prefix)
        self.captured_functions.append(captured)
        return captured

    def command(
        self, function: Callable | None = None, prefix: str | None = None, unobserved: bool = False
    ) -> Any:
        """Decorator: a captured function runnable as ``python exp.py NAME``."""
        if function is None:
            return lambda f: self.command(f, prefix=prefix, unobserved=unobserved)
        captured = self.capture(function, prefix=prefix)
        captured.unobserved = unobserved
        self.commands[function.__name__] = captured
        return captured

    def config_hook(self, function: Callable) -> Callable:
        """Decorator: ``f(config, command_name, logger)`` returns updates to the config."""
        import inspect

        names = list(inspect.signature(function).parameters)
        if names != ["config", "command_name", "logger"]:
            raise ValueError(
                "Wrong signature for config_hook. Expected: (config, command_name, logger)"
            )
        self.config_hooks.append(function)
        return function

    def pre_run_hook(self, function: Callable | None = None, prefix: str | None = None) -> Any:
        """Decorator: a captured function run before the main function."""
        if function is None:
            return lambda f: self.pre_run_hook(f, prefix=prefix)
        captured = self.capture(function, prefix=prefix)
        self.pre_run_hooks.append(captured)
        return captured

    def post_run_hook(self, function: Callable | None = None, prefix: str | None = None) -> Any:
        """Decorator: a captured function run after the main function returned."""
        if function is None:
            return lambda f: self.post_run_hook(f, prefix=prefix)
        captured = self.capture(function, prefix=prefix)
        self.post_run_hooks.append(captured)
        return captured

    # --- config -------------------------------------------------------------------

    def add_config(
        self, cfg_or_file: Mapping | str | os.PathLike | None = None, **kw_conf: Any
    ) -> None:
        """Add config entries from a dict, keyword arguments or a JSON/TOML/YAML file."""
        self.configurations.append(self._config_from(cfg_or_file, kw_conf, "add_config"))

    def add_named_config(
        self, name: str, cfg_or_file: Mapping | str | os.PathLike | None = None, **kw_conf: Any
    ) -> None:
        """Add a named config from a dict, keyword arguments or a file."""
        self._add_named(name, self._config_from(cfg_or_file, kw_conf, f"named config {name!r}"))

    def _add_named(self, name: str, conf: ConfigScope | ConfigDict) -> None:
        if name in self.named_configs:
            raise KeyError(f'Configuration name "{name}" already in use!')
        self.named_configs[name] = conf

    def _config_from(self, cfg_or_file: Any, kw_conf: dict, where: str) -> ConfigDict:
        if cfg_or_file is not None and kw_conf:
            raise ValueError("cannot combine keyword config with positional argument")
        if cfg_or_file is None:
            if not kw_conf:
                raise ValueError("attempted to add empty config")
            return ConfigDict(kw_conf, where)
        if isinstance(cfg_or_file, Mapping):
            return ConfigDict(cfg_or_file, where)
        if isinstance(cfg_or_file, (str, os.PathLike)):
            path = os.fspath(cfg_or_file)
            conf = ConfigDict(load_config_file(path, self.plugin_manager), f"config file {path!r}")
            # Read when the experiment's file is imported: a rerun needs it beside the code.
            if is_under(os.path.realpath(path), os.path.realpath(self.base_dir)):
                self.extra_sources.add(os.path.abspath(path))
            return conf
        raise TypeError(f"add_config takes a dict or a file name, not {type(cfg_or_file).__name__}")

    # --- sources and dependencies ---------------------------------------------------

    def add_source_file(self, filename: str | os.PathLike) -> None:
        """Store ``filename`` with every run, as if it had been imported."""
        path = os.path.abspath(os.fspath(filename))
        if not os.path.isfile(path):
            # Sacred's error type, raised here rather than when a run starts.
            raise ValueError(f"add_source_file: {path} does not exist or is not a file")
        self.extra_sources.add(path)

    def add_package_dependency(self, package_name: str, version: str) -> None:
        """Record ``package_name==version`` with every run."""
        if not re.match(_VERSION, version, re.IGNORECASE):
            raise ValueError(f"Invalid Version: {version!r}")
        self.extra_dependencies.add(Dependency(package_name, version))

    # --- traversal ------------------------------------------------------------------

    def traverse_ingredients(self) -> Iterator[tuple[Ingredient, int]]:
        """Yield ``(ingredient, depth)`` for this ingredient and all below it, pre-order."""
        seen: list[Ingredient] = []

        def walk(ing: Ingredient, depth: int, chain: tuple) -> Iterator[tuple[Ingredient, int]]:
            if ing in chain:
                raise CircularDependencyError(ingredients=[*chain[chain.index(ing) :], ing])
            if ing not in seen:
                seen.append(ing)
                yield ing, depth
                for sub in ing.ingredients:
                    yield from walk(sub, depth + 1, (*chain, ing))

        yield from walk(self, 0, ())

    def gather_commands(self) -> Iterator[tuple[str, Callable]]:
        """Yield ``(path.name, function)`` of every command (the experiment's own: ``name``)."""
        for ing, _ in self.traverse_ingredients():
            for name, fn in ing.commands.items():
                yield self._gathered_name(ing, name), fn

    def gather_named_configs(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(path.name, config)`` of every named config (the experiment's own: ``name``)."""
        for ing, _ in self.traverse_ingredients():
            for name, conf in ing.named_configs.items():
                yield self._gathered_name(ing, name), conf

    def _gathered_name(self, ing: Ingredient, name: str) -> str:
        # As in Sacred: only an experiment leaves its own path out of the names.
        return name if ing is self and self.is_experiment else f"{ing.path}.{name}"

    def get_experiment_info(self) -> dict:
        """The experiment record in Sacred's shape: name, base_dir, sources, dependencies, ..."""
        from expkit.info import gather_experiment_info

        return gather_experiment_info(self).as_sacred()

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager this ingredient's runs use."""
        pm = getattr(self, "_plugin_manager", None)
        if pm is None:
            from expkit.pluginmanager import get_plugin_manager

            pm = get_plugin_manager()
        return pm


def globals_of_caller() -> dict:
    """The globals of the module that called the constructor calling this."""
    frame = sys._getframe(1)
    # Skip frames of this module and of subclasses' __init__ chains.
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__ or frame.f_code.co_name == "__init__"
    ):
        frame = frame.f_back
    return frame.f_globals if frame is not None else {}


class Experiment(Ingredient):
    """The main ingredient: it has a main function and can be run."""

    is_experiment = True

    def __init__(
        self,
        name: str | None = None,
        ingredients: Sequence[Ingredient] = (),
        interactive: bool = False,
        base_dir: str | os.PathLike | None = None,
        additional_host_info: list[Callable] | None = None,
        additional_cli_options: Sequence[Any] | None = None,
        save_git_info: bool = True,
        plugin_manager: PluginManager | None = None,
        _caller_globals: dict | None = None,
    ) -> None:
        caller = _caller_globals if _caller_globals is not None else globals_of_caller()
        if name is None:
            mainfile = caller.get("__file__")
            if mainfile is None:
                raise RuntimeError("an interactive experiment needs a name: Experiment('name')")
            name = os.path.splitext(os.path.basename(mainfile))[0]
        super().__init__(
            path=name,
            ingredients=ingredients,
            interactive=interactive,
            _caller_globals=caller,
            base_dir=base_dir,
            save_git_info=save_git_info,
        )
        self._plugin_manager = plugin_manager
        self.name = name
        self.observers: list[Any] = []
        self.current_run: Run | None = None
        self.captured_out_filter: Callable[[str], str] | None = None
        self.option_hooks: list[Callable] = []
        self.default_command: str | None = None
        self.additional_host_info = list(additional_host_info or [])
        self.additional_cli_options = list(additional_cli_options or [])

    @property
    def config_path(self) -> str:
        """The experiment's entries live at the root of the config."""
        return ""

    # --- decorators ---------------------------------------------------------------

    def main(self, function: Callable) -> Callable:
        """Decorator: the function a plain run calls."""
        captured = self.command(function)
        self.default_command = function.__name__
        return captured

    def automain(self, function: Callable) -> Callable:
        """Decorator: like :meth:`main`, and run the command line when run as a script."""
        module = function.__module__
        if module == "__main__":
            filename = getattr(sys.modules.get("__main__"), "__file__", None)
            if filename is None:
                raise RuntimeError(
                    "Cannot use @ex.automain decorator in interactive mode. Use @ex.main instead."
                )
        captured = self.main(function)
        if module == "__main__":
            run = self.run_commandline()
            if run is not None and any(outcome.missing for outcome in run.stored):
                sys.exit(1)  # a store refused or lost the run, as logged: not a success
        return captured

    def option_hook(self, function: Callable) -> Callable:
        """Decorator: ``f(options)`` may change the command-line options before a run is made."""
        import inspect

        if "options" not in inspect.signature(function).parameters:
            raise KeyError("option hook must have a parameter named 'options'")
        self.option_hooks.append(function)
        return function

    # --- running --------------------------------------------------------------------

    def run(
        self,
        command_name: str | None = None,
        config_updates: Mapping | None = None,
        named_configs: Sequence[str] = (),
        info: Mapping | None = None,
        meta_info: Mapping | None = None,
        options: Mapping | None = None,
    ) -> Run:
        """Run a command (default: main) and return the finished :class:`~expkit.run.Run`."""
        run = self._create_run(
            command_name, config_updates, named_configs, info, meta_info, options
        )
        run()
        return run

    def _create_run(
        self,
        command_name: str | None = None,
        config_updates: Mapping | None = None,
        named_configs: Sequence[str] = (),
        info: Mapping | None = None,
        meta_info: Mapping | None = None,
        options: Mapping | None = None,
    ) -> Run:
        # Sacred's name for it: migrated code and tests build a run this way to read its
        # config without running it.
        return create_run(
            self,
            command_name or self.default_command,
            config_updates=config_updates,
            named_configs=named_configs,
            options=options,
            info=info,
            meta_info=meta_info,
        )

    def run_command(
        self,
        command_name: str,
        config_updates: Mapping | None = None,
        named_configs: Sequence[str] = (),
        info: Mapping | None = None,
        meta_info: Mapping | None = None,
        options: Mapping | None = None,
    ) -> Run:
        """Run the command ``command_name`` (as the paper shows) and return the Run."""
        return self.run(command_name, config_updates, named_configs, info, meta_info, options)

    def run_commandline(self, argv: Sequence[str] | str | None = None) -> Run | None:
        """Run as ``python exp.py [COMMAND] [with UPDATE ...] [flags]`` does; exits on errors."""
        if argv is None:
            argv = sys.argv
        elif isinstance(argv, str):
            import shlex  # only for a command line given as one string

            argv = shlex.split(argv)
        result = self.plugin_manager.hook.expkit_run_commandline(experiment=self, argv=list(argv))
        if result is None:
            raise ExpkitError("no plugin handles the script command line (is 'script' blocked?)")
        return result

    def check_resolvable(self, config: dict) -> None:
        """Raise when a function the run will call has a parameter nothing fills."""

    def extra_functions(self) -> list[Callable]:
        """Captured functions outside ``captured_functions`` whose parameters use the config."""
        return []

    # --- shortcuts to the current run -------------------------------------------------

    def _run_or_fail(self) -> Run:
        if self.current_run is None:
            raise RuntimeError("there is no current run: call this inside a running experiment")
        return self.current_run

    @property
    def info(self) -> dict:
        """The current run's ``info`` dict."""
        return self._run_or_fail().info

    def log_scalar(
        self, name: str, value: Any, step: int | None = None, *, total: int | None = None
    ) -> None:
        """Log a metric value of the current run (``total``: steps in all, for a progress bar)."""
        self._run_or_fail().log_scalar(name, value, step, total=total)

    def add_artifact(
        self,
        filename: str | os.PathLike,
        name: str | None = None,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Keep a file with the current run."""
        self._run_or_fail().add_artifact(filename, name, metadata, content_type)

    def add_resource(self, filename: str | os.PathLike) -> None:
        """Record an input file of the current run."""
        self._run_or_fail().add_resource(filename)

    def open_resource(self, filename: str | os.PathLike, mode: str = "r") -> Any:
        """Open an input file and record it with the current run."""
        return self._run_or_fail().open_resource(filename, mode)


__all__ = ["Experiment", "Ingredient", "captured_state"]
