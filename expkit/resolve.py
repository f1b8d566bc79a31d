"""Building a run's configuration: updates fixed, named configs in order, then the scopes."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from expkit.captured import SPECIAL_NAMES, captured_state
from expkit.configuration import (
    ConfigDict,
    ConfigSummary,
    flatten,
    get_path,
    join_path,
    load_config_file,
    merge,
    nest_dotted,
    normalize,
    restore_tuples,
    set_path,
    type_changed,
)
from expkit.errors import ConfigAddedError, ConfigError, NamedConfigNotFoundError
from expkit.logs import ingredient_logger, root_logger

if TYPE_CHECKING:
    from expkit.experiment import Experiment


def _named_config(experiment: Experiment, name: str) -> tuple[str, Any]:
    """The ingredient path and config a ``with NAME`` means (a config file wins, as in Sacred)."""
    if os.path.isfile(name):
        entries = load_config_file(name, experiment.plugin_manager)
        return "", ConfigDict(entries, f"config file {name!r}")
    named = dict(experiment.gather_named_configs())
    if name in named:
        path = name.rpartition(".")[0] if name not in experiment.named_configs else ""
        return path, named[name]
    raise NamedConfigNotFoundError(name, available_named_configs=tuple(named))


def resolve_config(
    experiment: Experiment,
    config_updates: Mapping | None = None,
    named_configs: Sequence[str] = (),
    command_name: str | None = None,
) -> ConfigSummary:
    """Build a run's configuration: updates fixed, named configs in order, then the scopes."""
    base_logger = root_logger(experiment)
    updates = normalize(nest_dotted(dict(config_updates or {})), "", "the config updates")
    _refuse_special_names(updates)
    named_result: dict = {}
    for name in named_configs:
        path, conf = _named_config(experiment, name)
        result = conf(
            fixed=get_path(updates, path, {}) if path else updates,
            preset=get_path(named_result, path, {}) if path else named_result,
            fallback={"_log": ingredient_logger(base_logger, path)},
        )
        entries = {k: v for k, v in result.config.items() if k != "__doc__"}
        if path:
            set_path(named_result, path, merge(get_path(named_result, path, {}) or {}, entries))
        else:
            merge(named_result, entries)
    fixed = merge(copy.deepcopy(named_result), updates)

    config: dict = {}
    own_values: dict = {}  # path -> what the scopes set where a fixed value won
    defined: set[str] = set()  # paths the scopes define
    docs: dict = {}
    logger = base_logger.getChild(experiment.path)
    levels = sorted(experiment.traverse_ingredients(), key=lambda item: -item[1])
    for ing, _ in levels:
        base = ing.config_path
        fixed_here = (get_path(fixed, base, {}) if base else fixed) or {}
        fallback = {
            sub.path.rsplit(".", 1)[-1]: copy.deepcopy(get_path(config, sub.config_path, {}))
            for sub in ing.ingredients
        }
        fallback["_log"] = ingredient_logger(base_logger, base)
        entries: dict = copy.deepcopy(fixed_here) if not ing.configurations else {}
        for conf in ing.configurations:
            result = conf(fixed=fixed_here, preset=entries, fallback=fallback)
            entries = result.config
            for path, value in result.defaults.items():
                own_values[join_path(base, path)] = value
            defined.update(join_path(base, path) for path in result.defined)
            for key, doc in result.docs.items():
                docs[join_path(base, key)] = doc
        for hook_fn in ing.config_hooks:
            whole = copy.deepcopy(config)
            if base:
                set_path(whole, base, copy.deepcopy(entries))
            else:
                merge(whole, entries)
            more = hook_fn(config=whole, command_name=command_name, logger=logger)
            if more:
                merge(entries, normalize(dict(more), "", f"config hook {hook_fn.__name__!r}"))
                merge(entries, fixed_here)
                for path, _value in flatten(more):
                    defined.add(join_path(base, path))
        if base:
            set_path(config, base, merge(get_path(config, base, {}) or {}, entries))
        else:
            merge(config, entries)
    restore_tuples(fixed, own_values)
    merge(config, fixed)  # fixed entries of ingredients without scopes, and new ones

    for defaults in experiment.plugin_manager.hook.expkit_config_defaults(experiment=experiment):
        for default in defaults or ():
            defined.add(default.key)
            if default.doc:
                docs[default.key] = default.doc
            if default.key not in config:
                config[default.key] = default.value

    added, modified, typechanged = set(), set(), {}
    for path, value in flatten(fixed):
        if path in own_values:
            old = own_values[path]
            if type_changed(old, value):
                typechanged[path] = (type(old), type(value))
            elif old != value:
                modified.add(path)
        elif path in defined:
            modified.add(path)
        elif not (value == {} and _holds(defined, path)):  # {} merged into a dict: no change
            added.add(path)
    return ConfigSummary(config, added=added, modified=modified, typechanged=typechanged, docs=docs)


def _refuse_special_names(updates: Mapping) -> None:
    # A function asking for _run gets the run whatever the config holds: an entry of that
    # name would be stored, and rerun, yet never used.
    for path, _ in flatten(updates):
        for name in path.split("."):
            if name in SPECIAL_NAMES:
                raise ConfigError(
                    f"the update {path!r} cannot be made: {name} is not a config entry but "
                    f"what expkit passes to a function that asks for it "
                    f"({_SPECIAL.get(name, 'a value of its own')})",
                    print_traceback=False,
                )


_SPECIAL = {
    "_config": "the whole config",
    "_run": "the run",
    "_log": "a logger",
    "_seed": "a seed of its own",
    "_rnd": "a random generator of its own",
}


def _uses(fn: Callable, path: str) -> bool:
    cf = captured_state(fn)
    base = join_path(cf.ingredient.config_path if cf.ingredient else "", cf.prefix or "")
    if "_config" in cf.params.names and (not base or path == base or path.startswith(base + ".")):
        return True
    for name in cf.params.names:
        full = join_path(base, name)
        if path == full or path.startswith(full + ".") or full.startswith(path + "."):
            return True
    return cf.params.has_varkw and (not base or path.startswith(base + "."))


def _holds(defined: set[str], path: str) -> bool:
    prefix = path + "."
    return any(key.startswith(prefix) for key in defined)


def check_added_entries(
    experiment: Experiment, summary: ConfigSummary, extra_uses: Sequence = ()
) -> None:
    """Refuse added entries no captured function uses (they are most likely typos)."""
    functions = [f for ing, _ in experiment.traverse_ingredients() for f in ing.captured_functions]
    functions += list(extra_uses)
    unused = sorted(p for p in summary.added if not any(_uses(f, p) for f in functions))
    if unused:
        known = [p for p, _ in flatten(summary) if p not in summary.added]
        raise ConfigAddedError(unused, captured_args=known, config=summary)
