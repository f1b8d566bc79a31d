"""Captured functions: config entries injected into parameters by name.

The signature is read once, when a function is captured. When a run starts it
binds every captured function once: the values each parameter gets are looked up
then, so a call inside the run costs one attribute check more than a plain call.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from expkit.configuration import get_path, join_path
from expkit.errors import ExpkitError, MissingConfigError, SignatureError
from expkit.utils import suggest

if TYPE_CHECKING:
    from expkit.experiment import Ingredient
    from expkit.run import Run

SPECIAL_NAMES = ("_config", "_run", "_log", "_seed", "_rnd")
_PER_CALL = frozenset({"_seed", "_rnd"})


@attrs.frozen
class Parameters:
    """The parameters of a function, as injection needs them."""

    positional: tuple[str, ...]
    keyword_only: tuple[str, ...]
    required: frozenset[str]
    has_varargs: bool
    has_varkw: bool

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter that can be filled by name."""
        return self.positional + self.keyword_only


def parameters_of(fn: Callable) -> Parameters:
    """Read ``fn``'s signature once."""
    positional, keyword_only, required = [], [], set()
    has_varargs = has_varkw = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            has_varargs = True
        elif p.kind is p.VAR_KEYWORD:
            has_varkw = True
        elif p.kind is p.KEYWORD_ONLY:
            keyword_only.append(p.name)
        else:
            positional.append(p.name)
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is p.empty:
            required.add(p.name)
    return Parameters(
        tuple(positional), tuple(keyword_only), frozenset(required), has_varargs, has_varkw
    )


def _immutable(value: Any) -> bool:
    if isinstance(value, (dict, list, set)):
        return False
    if isinstance(value, tuple):
        return all(_immutable(v) for v in value)
    return True


@attrs.define
class Binding:
    """What a captured function receives during one run."""

    run: Run
    values: dict[str, Any]  # filled from config, fixtures and fixed special names
    mutable: frozenset[str]  # copied on every call so calls cannot change the config
    per_call: tuple[str, ...]  # _seed and _rnd: new on every call
    missing: tuple[str, ...]
    fast: dict[str, Any] | None  # the complete keyword arguments when nothing varies per call
    fast_args: tuple | None = None  # the same as positional arguments, when they fit
    seeder: Any = None
    previous: Binding | None = None


class CapturedFunction:
    """The state behind a captured function: its parameters and its current binding."""

    def __init__(
        self, fn: Callable, ingredient: Ingredient | None, prefix: str | None = None
    ) -> None:
        self.fn = fn
        self.ingredient = ingredient
        self.prefix = prefix
        self.params = parameters_of(fn)
        self.binding: Binding | None = None
        self._fast: list = [None]  # the bound positional arguments, read by the wrapper
        self.logger = logging.getLogger(
            join_path(
                ingredient.path if ingredient and not ingredient.is_experiment else "", fn.__name__
            )
        )

    @property
    def name(self) -> str:
        """The function's name as users know it."""
        return self.fn.__name__

    def describe(self) -> str:
        """``main() in exp.py``: how error messages name the function."""
        code = getattr(self.fn, "__code__", None)
        where = f" in {code.co_filename.rsplit('/', 1)[-1]}" if code else ""
        return f"{self.fn.__qualname__}(){where}"

    def config_view(self, config: Mapping) -> dict:
        """The part of the run's config this function sees (its ingredient's, under its prefix)."""
        path = join_path(self.ingredient.config_path if self.ingredient else "", self.prefix or "")
        view = get_path(config, path, {}) if path else config
        view = dict(view) if isinstance(view, Mapping) else {}
        if self.ingredient is not None and not self.prefix:
            # As in Sacred: every ingredient below this one, not only its own ones.
            for sub, depth in self.ingredient.traverse_ingredients():
                if depth:
                    name = sub.path.rsplit(".", 1)[-1]
                    view.setdefault(name, get_path(config, sub.config_path, {}))
        return view

    def bind(self, run: Run, extra: Mapping[str, Any] | None = None) -> Binding:
        """Fix what this function receives in ``run``; ``extra`` (fixtures) wins over config."""
        view = self.config_view(run.config)
        values: dict[str, Any] = {}
        per_call, missing = [], []
        for name in self.params.names:
            if name in _PER_CALL:
                per_call.append(name)
            elif name == "_config":
                values[name] = view
            elif name == "_run":
                values[name] = run
            elif name == "_log":
                # Under ``ex.logger`` when the experiment has one, as in Sacred.
                values[name] = run.root_logger.getChild(self.logger.name)
            elif extra is not None and name in extra:
                values[name] = extra[name]
            elif name in view:
                values[name] = view[name]
            elif name in self.params.required:
                missing.append(name)
        # Config values are copied per call so calls cannot change the config; fixtures are
        # handed over as they are: computed once per run and meant to be shared.
        mutable = frozenset(
            n
            for n, v in values.items()
            if n not in ("_run", "_log") and not (extra and n in extra) and not _immutable(v)
        )
        fast = dict(values) if not (per_call or missing or mutable) else None
        fast_args = None
        # Positional arguments are cheaper to pass than keywords.
        if fast is not None and list(fast) == list(self.params.positional):
            fast_args = tuple(fast.values())
        binding = Binding(
            run,
            values,
            mutable,
            tuple(per_call),
            tuple(missing),
            fast,
            fast_args,
            None,
            self.binding,
        )
        self._set(binding)
        return binding

    def _set(self, binding: Binding | None) -> None:
        self.binding = binding
        self._fast[0] = binding.fast_args if binding is not None else None

    def unbind(self) -> None:
        """Forget the current run's binding, restoring an outer one."""
        if self.binding is not None:
            self._set(self.binding.previous)

    def check_resolvable(self, config: Mapping, fixtures: Iterable[str] = ()) -> None:
        """Raise before a run starts when a required parameter names nothing."""
        fixtures = list(fixtures)
        known = {*SPECIAL_NAMES, *fixtures, *self.config_view(config)}
        missing = [n for n in self.params.names if n in self.params.required and n not in known]
        if missing:
            raise self.missing_error(missing, config, fixtures)

    def missing_error(
        self,
        names: tuple[str, ...] | list[str],
        config: Mapping | None = None,
        fixtures: Iterable[str] = (),
    ) -> MissingConfigError:
        """The error for parameters nothing can fill, with near misses."""
        candidates = [*SPECIAL_NAMES, *fixtures]
        if config is not None:
            candidates += list(self.config_view(config))
        lines = [
            f"{self.describe()} has parameter {name!r} that is neither a config entry, "
            f"a fixture nor a special name{suggest(name, candidates)}"
            for name in names
        ]
        return MissingConfigError("\n".join(lines))

    def arguments(self, binding: Binding, args: tuple, kwargs: dict) -> dict:
        """Keyword arguments for one call: explicit ones win, then bound values, then defaults."""
        self._check_call(args, kwargs)
        taken = self.params.positional[: len(args)]
        out = dict(kwargs)
        for name, value in binding.values.items():
            if name in out or name in taken:
                continue
            out[name] = copy.deepcopy(value) if name in binding.mutable else value
        if binding.per_call:
            wanted = [n for n in binding.per_call if n not in out and n not in taken]
            if wanted:
                seeder = binding.seeder
                if seeder is None:
                    hook = binding.run.plugin_manager.hook
                    seeder = hook.expkit_function_seeder(run=binding.run, function=self)
                    if seeder is None:
                        raise ExpkitError(
                            f"{self.describe()} asks for {' and '.join(wanted)}, which the "
                            "seeding plugin provides; it is not loaded (blocked with "
                            "-p no:seeding?)"
                        )
                    binding.seeder = seeder
                seed = seeder.seed()
                if "_seed" in wanted:
                    out["_seed"] = seed
                if "_rnd" in wanted:
                    out["_rnd"] = seeder.rnd(seed)
        missing = [n for n in binding.missing if n not in out and n not in taken]
        if missing:
            raise self.missing_error(missing, binding.run.config)
        return out

    def _check_call(self, args: tuple, kwargs: dict) -> None:
        # Sacred's SignatureError (a TypeError) rather than Python's message about the
        # keyword arguments the injection added.
        params = self.params
        if len(args) > len(params.positional) and not params.has_varargs:
            extra = args[len(params.positional) :]
            raise SignatureError(f"{self.describe()} got unexpected argument(s): {extra}")
        if not params.has_varkw:
            unexpected = sorted(set(kwargs) - set(params.names))
            if unexpected:
                raise SignatureError(f"{self.describe()} got unexpected kwarg(s): {unexpected}")
        twice = [name for name in params.positional[: len(args)] if name in kwargs]
        if twice:
            raise SignatureError(f"{self.describe()} got multiple values for argument(s) {twice}")


def capture(
    fn: Callable, ingredient: Ingredient | None = None, prefix: str | None = None
) -> Callable:
    """Wrap ``fn`` so that a run fills its parameters; outside a run it is ``fn`` itself."""
    if hasattr(fn, "__expkit_captured__"):
        return fn
    cf = CapturedFunction(fn, ingredient, prefix)
    fast_args = cf._fast

    def captured(*args: Any, **kwargs: Any) -> Any:
        bound = fast_args[0]
        if bound is not None and not args and not kwargs:
            return fn(*bound)
        binding = cf.binding
        if binding is None:
            return fn(*args, **kwargs)
        fast = binding.fast
        if fast is not None and not args and not kwargs:
            return fn(**fast)
        return fn(*args, **cf.arguments(binding, args, kwargs))

    functools.update_wrapper(captured, fn)
    captured.__expkit_captured__ = cf  # type: ignore[attr-defined]
    captured.prefix = prefix  # type: ignore[attr-defined]
    captured.logger = cf.logger  # type: ignore[attr-defined]
    return captured


def captured_state(fn: Callable) -> CapturedFunction:
    """The :class:`CapturedFunction` behind a captured function."""
    return fn.__expkit_captured__  # type: ignore[attr-defined]
