"""Module experiments: ``exp_*`` functions with module-level config and fixtures.

A file ``exp_iris.py`` declares config with ``@expkit.config``, named configs with
``@expkit.named_config`` and fixtures with ``@expkit.fixture``; every function named
``exp_*`` in it is one experiment. ``expconf.py`` files in the folders above add
shared config, named configs and fixtures, nearest last, so the nearest wins.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import attrs

from expkit.captured import SPECIAL_NAMES, capture, captured_state
from expkit.configuration import ConfigDict, ConfigScope
from expkit.errors import ConfigError
from expkit.experiment import Experiment


def config(function: Callable) -> ConfigScope:
    """Decorator: a module-level config scope shared by the module's experiments."""
    scope = ConfigScope(function)
    scope.module_level = True  # type: ignore[attr-defined]
    return scope


def named_config(function: Callable) -> ConfigScope:
    """Decorator: a module-level named config, applied with ``-w NAME``."""
    scope = ConfigScope(function)
    scope.module_level_named = True  # type: ignore[attr-defined]
    return scope


@attrs.frozen
class Fixture:
    """A function whose value experiments and other fixtures request by name."""

    name: str
    function: Callable

    @property
    def parameters(self) -> list[str]:
        """The names this fixture requests."""
        return list(inspect.signature(self.function).parameters)


def fixture(function: Callable | None = None, *, name: str | None = None) -> Any:
    """Decorator: a fixture, computed when requested, once per run; ``yield`` gives teardown."""
    if function is None:
        return lambda f: fixture(f, name=name)
    return Fixture(name or function.__name__, function)


@attrs.frozen
class Parametrize:
    """The values ``@expkit.parametrize`` gives one or more config entries."""

    names: tuple[str, ...]
    values: tuple[tuple, ...]  # one tuple per point, a value per name


def parametrize(argnames: str | Sequence[str], argvalues: Iterable[Any]) -> Callable:
    """Decorator: run a module experiment once per value of a config entry, as pytest does.

    ``@expkit.parametrize("C", [0.1, 1, 10])``; several names take tuples of values,
    zipped (``@expkit.parametrize("C, gamma", [(1, 0.1), (10, 0.01)])``). Stacked
    decorators give their product; the one nearest the function varies slowest.
    """
    names = tuple(
        n.strip() for n in (argnames.split(",") if isinstance(argnames, str) else argnames)
    )
    if not names or any(not all(p.isidentifier() for p in n.split(".")) for n in names):
        raise ConfigError(f"parametrize: {argnames!r} is not a config key or a list of them")
    rows = []
    for value in argvalues:
        if len(names) == 1:
            rows.append((value,))
            continue
        if not isinstance(value, (tuple, list)) or len(value) != len(names):
            raise ConfigError(
                f"parametrize({argnames!r}, ...): each value must be a tuple of {len(names)} "
                f"values, one per name; got {value!r}"
            )
        rows.append(tuple(value))
    if not rows:
        raise ConfigError(f"parametrize({argnames!r}, ...) has no values")
    mark = Parametrize(names, tuple(rows))

    def decorate(function: Callable) -> Callable:
        function.__dict__.setdefault("expkit_parametrize", []).append(mark)
        return function

    return decorate


@attrs.frozen
class ModuleParts:
    """What a module (or an expconf.py) contributes to its experiments."""

    configs: tuple[ConfigScope, ...]
    named_configs: tuple[tuple[str, ConfigScope], ...]
    fixtures: tuple[Fixture, ...]


def module_parts(module: ModuleType) -> ModuleParts:
    """Find the module-level config scopes, named configs and fixtures of ``module``."""
    configs, named, fixtures = [], [], []
    for attr, value in vars(module).items():
        if isinstance(value, ConfigScope):
            if getattr(value, "module_level", False):
                configs.append(value)
            elif getattr(value, "module_level_named", False):
                named.append((attr, value))
        elif isinstance(value, Fixture):
            fixtures.append(value)
    return ModuleParts(tuple(configs), tuple(named), tuple(fixtures))


def _base_dir(file: str, parts: list[ModuleParts]) -> str:
    """The folder of ``file``, or the one above that holds the ``expconf.py`` files it uses:
    the sources are stored under it, and a rerun needs them all."""
    folders = {os.path.dirname(os.path.abspath(file))}
    for part in parts:
        scopes = [*part.configs, *(scope for _, scope in part.named_configs)]
        functions = [getattr(s, "func", None) for s in scopes] + [f.function for f in part.fixtures]
        for function in filter(None, functions):
            code = getattr(inspect.unwrap(function), "__code__", None)
            # Only expconf.py files: a fixture imported from a package lives elsewhere.
            if code is not None and os.path.basename(code.co_filename) == "expconf.py":
                folders.add(os.path.dirname(os.path.abspath(code.co_filename)))
    return os.path.commonpath(sorted(folders))


class ModuleExperiment(Experiment):
    """An ``exp_*`` function of a module, run as an experiment with fixtures."""

    def __init__(
        self,
        function: Callable,
        name: str,
        parts: Iterable[ModuleParts],
        plugin_manager: Any = None,
    ) -> None:
        module_globals = function.__globals__
        parts = list(parts)
        super().__init__(
            name=name,
            base_dir=_base_dir(module_globals.get("__file__") or ".", parts),
            plugin_manager=plugin_manager,
            _caller_globals=module_globals,
        )
        self.function = function
        # Nearest the function first, as the decorators were applied.
        self.parametrize: list[Parametrize] = list(getattr(function, "expkit_parametrize", ()))
        self.fixtures: dict[str, Fixture] = {}
        if self.parametrize:
            # A parametrized name is an entry of the experiment's config, as a parametrized
            # argument is part of a test: its first value is its default.
            defaults = {
                n: mark.values[0][i] for mark in self.parametrize for i, n in enumerate(mark.names)
            }
            self.configurations.append(ConfigDict(defaults, "@expkit.parametrize"))
        for part in parts:  # outermost first: the nearest definition wins
            self.configurations.extend(part.configs)
            for key, scope in part.named_configs:
                self.named_configs[key] = scope
            for fx in part.fixtures:
                self.fixtures[fx.name] = fx
        self._fixture_functions = {n: capture(f.function, self) for n, f in self.fixtures.items()}
        self._experiment_function = capture(function, self)
        self.main(_make_main(self))

    def requested_fixtures(self) -> list[str]:
        """The fixtures the experiment needs, directly or through others, in set-up order."""
        order: list[str] = []

        def visit(fn: Callable, chain: tuple[str, ...]) -> None:
            for param in captured_state(fn).params.names:
                if param in SPECIAL_NAMES or param not in self.fixtures:
                    continue
                if param in chain:
                    raise ConfigError(
                        "fixtures request each other in a circle: " + " -> ".join((*chain, param))
                    )
                if param not in order:
                    visit(self._fixture_functions[param], (*chain, param))
                    order.append(param)

        visit(self._experiment_function, ())
        return order

    def extra_functions(self) -> list[Callable]:
        """The functions whose parameters use config entries besides the main one."""
        return [self._experiment_function, *self._fixture_functions.values()]

    def check_resolvable(self, config: dict) -> None:
        """Fail before the run starts when a parameter names nothing; suggest near misses."""
        needed = self.requested_fixtures()
        for fn in [self._experiment_function] + [self._fixture_functions[n] for n in needed]:
            captured_state(fn).check_resolvable(config, self.fixtures)


def _make_main(experiment: ModuleExperiment) -> Callable:
    def main(_run: Any) -> Any:
        teardowns: list[tuple[str, Any]] = []
        try:
            result = _call_with_fixtures(experiment, _run, teardowns)
        except BaseException:
            _teardown(teardowns, _run, raise_errors=False)
            raise
        _teardown(teardowns, _run, raise_errors=True)
        return result

    main.__name__ = experiment.function.__name__
    main.__doc__ = experiment.function.__doc__
    return main


def _call_bound(fn: Callable, run: Any, values: dict) -> Any:
    cf = captured_state(fn)
    cf.bind(run, values)
    try:
        return fn()
    finally:
        cf.unbind()


def _call_with_fixtures(experiment: ModuleExperiment, run: Any, teardowns: list) -> Any:
    values: dict[str, Any] = {}
    for name in experiment.requested_fixtures():
        value = _call_bound(experiment._fixture_functions[name], run, values)
        if inspect.isgenerator(value):
            teardowns.append((name, value))
            value = next(value)
        values[name] = value
    return _call_bound(experiment._experiment_function, run, values)


def _teardown(teardowns: list[tuple[str, Any]], run: Any, raise_errors: bool) -> None:
    """Finish the fixtures in reverse order; a failing teardown does not stop the others."""
    first_error: BaseException | None = None
    for name, generator in reversed(teardowns):
        try:
            next(generator)
        except StopIteration:
            continue
        except BaseException as exc:
            run.run_logger.error("teardown of fixture %r failed: %s", name, exc)
            first_error = first_error or exc
        else:
            first_error = first_error or ConfigError(f"fixture {name!r} must yield only once")
    if first_error is not None and raise_errors:
        raise first_error
