"""Config scopes, config dicts and the helpers that merge and compare configurations.

A config scope is a function whose local variables become config entries. Entries
fixed from outside (updates, named configs) are in place before the body runs and
are restored after every statement, so ``b = 3 * a`` follows an update of ``a``.
"""

from __future__ import annotations

import ast
import copy
import inspect
import io
import math
import os
import re
import textwrap
import tokenize
import types
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import ConfigError, ExpkitError, InvalidConfigKeyError
from expkit.settings import SETTINGS

if TYPE_CHECKING:
    from expkit.pluginmanager import PluginManager

_FIX = "__expkit_fix__"
_NOT_CONFIG = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    type,
    types.MethodType,
)


@attrs.frozen
class ScopeResult:
    """What evaluating one config scope or dict gave.

    ``config`` holds the entries; ``defaults`` maps dotted paths to the value the
    scope itself set where a fixed value overrode it; ``docs`` maps paths to docs.
    """

    config: dict
    defaults: dict
    docs: dict
    defined: frozenset = frozenset()  # the paths the scope itself sets


class ConfigSummary(dict):
    """A configuration plus what changed: ``added``, ``modified``, ``typechanged`` and ``docs``."""

    def __init__(
        self,
        config: Mapping | None = None,
        added: set | None = None,
        modified: set | None = None,
        typechanged: dict | None = None,
        docs: dict | None = None,
    ) -> None:
        super().__init__(config or {})
        self.added = set(added or ())
        self.modified = set(modified or ())
        self.typechanged = dict(typechanged or {})
        self.docs = dict(docs or {})


# --- paths and merging -------------------------------------------------------------


def split_path(path: str) -> list[str]:
    """``"a.b.c"`` as ``["a", "b", "c"]``; the empty path is the root."""
    return path.split(".") if path else []


def join_path(*parts: str) -> str:
    """Join path parts with dots, skipping empty ones."""
    return ".".join(filter(None, parts))


def get_path(config: Mapping, path: str, default: Any = None) -> Any:
    """The value at a dotted ``path`` in nested dicts, or ``default``."""
    current: Any = config
    for key in split_path(path):
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


def set_path(config: dict, path: str, value: Any) -> None:
    """Set the value at a dotted ``path``, creating dicts on the way."""
    *parents, last = split_path(path)
    current = config
    for key in parents:
        nxt = current.get(key)
        if not isinstance(nxt, dict):
            nxt = current[key] = {}
        current = nxt
    current[last] = value


def nest_dotted(updates: Mapping) -> dict:
    """Turn ``{"a.b": 1}`` into ``{"a": {"b": 1}}``, merging nested dicts."""
    result: dict = {}
    for key, value in updates.items():
        if isinstance(value, Mapping):
            value = nest_dotted(value)
        if isinstance(key, str) and "." in key:  # other keys are refused by normalize
            existing = get_path(result, key)
            if isinstance(existing, dict) and isinstance(value, dict):
                merge(existing, value)
            else:
                set_path(result, key, value)
        elif isinstance(result.get(key), dict) and isinstance(value, dict):
            merge(result[key], value)
        else:
            result[key] = value
    return result


def merge(target: dict, source: Mapping) -> dict:
    """Merge ``source`` into ``target`` key by key, recursing into dicts; ``source`` wins."""
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value) if isinstance(value, (dict, list)) else value
    return target


# Values that are never a Mapping: most config entries, told apart without asking the ABC.
_LEAVES = frozenset({str, int, float, bool, type(None), list})


def flatten(config: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, value)`` for every leaf; an empty dict is a leaf."""
    for key, value in config.items():
        path = join_path(prefix, key)
        if type(value) not in _LEAVES and isinstance(value, Mapping) and value:
            yield from flatten(value, path)
        else:
            yield path, value


# --- values ------------------------------------------------------------------------


def _check_key(key: Any, where: str) -> None:
    settings = SETTINGS.CONFIG
    if not isinstance(key, str):
        raise InvalidConfigKeyError(f"config key {key!r} in {where} must be a string")
    if settings.ENFORCE_KEYS_MONGO_COMPATIBLE and ("." in key or key.startswith("$")):
        raise InvalidConfigKeyError(
            f"invalid config key {key!r} in {where}: keys may not contain '.' or start with '$'"
        )
    if settings.ENFORCE_KEYS_JSONPICKLE_COMPATIBLE and key.startswith(("py/", "json://")):
        raise InvalidConfigKeyError(
            f"invalid config key {key!r} in {where}: keys starting with 'py/' or 'json://' "
            "are jsonpickle's tags, which Sacred's readers would misread"
        )
    if settings.ENFORCE_VALID_PYTHON_IDENTIFIER_KEYS and not key.isidentifier():
        raise InvalidConfigKeyError(
            f"invalid config key {key!r} in {where}: keys must be Python identifiers "
            "(SETTINGS.CONFIG.ENFORCE_VALID_PYTHON_IDENTIFIER_KEYS is on)"
        )
    if settings.ENFORCE_KEYS_NO_EQUALS and "=" in key:
        raise InvalidConfigKeyError(
            f"invalid config key {key!r} in {where}: keys may not contain '='"
        )


def normalize(value: Any, path: str, where: str) -> Any:
    """Check that ``value`` is JSON data; numpy scalars become Python ones, tuples stay."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, sub in value.items():
            _check_key(key, where)
            out[key] = normalize(sub, join_path(path, key), where)
        return out
    if isinstance(value, list):
        return [normalize(v, f"{path}[{i}]", where) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(normalize(v, f"{path}[{i}]", where) for i, v in enumerate(value))
    hint = " (use .tolist())" if type(value).__module__ == "numpy" else ""
    raise ConfigError(
        f"config entry {path!r} in {where} is a {type(value).__name__}, which cannot be "
        f"stored as JSON{hint}; use numbers, strings, booleans, None, lists or dicts"
    )


def type_changed(old: Any, new: Any) -> bool:
    """Whether ``new`` is another kind of value than ``old`` (numbers, sequences, None aside)."""
    if old is None or new is None:
        return False
    numbers = (int, float)
    if type(old) in numbers and type(new) in numbers:
        return False  # gamma=7 for 0.7 is a new value, not a new kind of entry
    kinds = {tuple: list}
    return kinds.get(type(old), type(old)) is not kinds.get(type(new), type(new))


def restore_tuples(fixed: dict, own_values: Mapping[str, Any]) -> None:
    """Make tuples of the lists in ``fixed`` where the scopes' ``own_values`` are tuples.

    A stored config, a config file and ``-o KEY=[...]`` cannot say tuple: a list given
    for an entry its scope sets to a tuple is that tuple's new value.
    """
    for path, own in own_values.items():
        value = get_path(fixed, path, _MISSING)
        if value is not _MISSING:
            set_path(fixed, path, _tuples_like(own, value))


def _tuples_like(own: Any, value: Any) -> Any:
    if isinstance(own, Mapping) and isinstance(value, dict):
        return {key: _tuples_like(own.get(key), sub) for key, sub in value.items()}
    if isinstance(own, (list, tuple)) and isinstance(value, (list, tuple)):
        items = [_tuples_like(own[i] if i < len(own) else None, v) for i, v in enumerate(value)]
        return tuple(items) if isinstance(own, tuple) else type(value)(items)
    return value


# --- config dicts -----------------------------------------------------------------


class ConfigDict:
    """Config entries given as a dict (``add_config``, config files)."""

    def __init__(self, entries: Mapping, where: str = "add_config") -> None:
        self.where = where
        self.entries = normalize(nest_dotted(dict(entries)), "", where)

    def __call__(
        self,
        fixed: Mapping | None = None,
        preset: Mapping | None = None,
        fallback: Mapping | None = None,
    ) -> ScopeResult:
        """Evaluate: ``fixed`` entries win over this dict's, ``preset`` ones are kept."""
        config = merge(merge({}, preset or {}), self.entries)
        entries = list(flatten(self.entries))
        defaults = {
            path: value
            for path, value in entries
            if get_path(fixed or {}, path, _MISSING) is not _MISSING
        }
        merge(config, fixed or {})
        defined = frozenset(path for path, _ in entries)
        return ScopeResult(config=config, defaults=defaults, docs={}, defined=defined)


_MISSING = object()


class _ScopeParameterError(ConfigError, KeyError):
    """A config scope's parameter names nothing it can read (Sacred raised a KeyError)."""

    def __str__(self) -> str:
        return str(self.args[0])  # not KeyError's quoted form


# --- config scopes ----------------------------------------------------------------


class ConfigScope:
    """A function whose local variables become config entries; comments become docs."""

    def __init__(self, func: Callable) -> None:
        self.func = func
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.where = f"config scope {func.__qualname__!r}"
        self._code, self.arg_names, self.assigned, self.docs, self.scope_doc = _compile_scope(func)

    def __call__(
        self,
        fixed: Mapping | None = None,
        preset: Mapping | None = None,
        fallback: Mapping | None = None,
    ) -> ScopeResult:
        """Run the body with ``fixed`` pinned; ``preset`` is kept, ``fallback`` only readable."""
        fixed = dict(fixed or {})
        preset = dict(preset or {})
        fallback = dict(fallback or {})
        for name in self.arg_names:
            if name not in fixed and name not in preset and name not in fallback:
                raise _ScopeParameterError(
                    f"{self.where} has parameter {name!r}, which names no earlier config entry, "
                    "ingredient or special name (_log) (not in preset for ConfigScope)"
                )
        namespace = dict(self.func.__globals__)
        # The scope's own names are its locals: a module global of the same name must not
        # leak into the config through a branch that was not taken.
        for name in self.assigned:
            namespace.pop(name, None)
        # As in Sacred, earlier entries and ingredients are readable only when declared.
        namespace.update({k: v for k, v in fallback.items() if k in self.arg_names})
        namespace.update({k: copy.deepcopy(v) for k, v in preset.items() if k in self.arg_names})
        pinned: dict = {}  # key -> the value fixed entries must have; never handed to the scope
        placed: dict = {}  # key -> the object put into the namespace for it
        for key, value in fixed.items():
            # Only the updated leaves are pinned: the scope may change the entry's others.
            pinned[key] = copy.deepcopy(value)
            # A partial update of a dict entry the scope reads keeps the entry's other keys.
            current = namespace.get(key) if key in self.arg_names else None
            if isinstance(value, dict) and isinstance(current, dict):
                value = merge(copy.deepcopy(current), value)
            namespace[key] = placed[key] = copy.deepcopy(value)
        defaults: dict = {}

        def fix() -> None:
            for key, value in pinned.items():
                current = namespace.get(key, _MISSING)
                if current is placed[key]:
                    if isinstance(value, dict):
                        merge(current, value)  # changed in place: the fixed leaves win again
                    continue
                if current is not _MISSING and key in self.assigned:
                    _record_defaults(defaults, key, current, value)
                if isinstance(value, dict) and isinstance(current, dict):
                    new = merge(copy.deepcopy(current), value)
                else:
                    new = copy.deepcopy(value)
                namespace[key] = placed[key] = _tuples_like(current, new)

        namespace[_FIX] = fix
        exec(self._code, namespace)  # the scope's own code, compiled from its source
        config: dict = copy.deepcopy(preset)
        # An earlier entry the scope reads and changes in place (opts["lr"] = 0.01,
        # layers.append(3)) is the changed entry from here on, as in Sacred.
        changed = [k for k in self.arg_names if k in preset and k not in self.assigned]
        for key in changed:
            if key not in fixed and key in namespace:  # not del-eted by the scope
                config[key] = normalize(namespace[key], key, self.where)
        for key in self.assigned + [k for k in fixed if k not in self.assigned]:
            if key not in namespace:
                continue
            if key in fallback:
                if (
                    key in self.assigned
                    and key != "_log"
                    and hasattr(fallback.get("_log"), "warning")
                ):
                    # An ingredient's entries are its own scopes' to set, as in Sacred.
                    fallback["_log"].warning(
                        'Ignored attempt to set value of "%s", because it is an ingredient.', key
                    )
                continue
            value = namespace[key]
            if isinstance(value, _NOT_CONFIG) or key == _FIX:
                continue
            _check_key(key, self.where)
            value = normalize(value, key, self.where)
            # Later scopes merge into earlier dicts key by key, as in Sacred.
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                merge(config[key], value)
            else:
                config[key] = value
        if self.scope_doc:
            config.setdefault("__doc__", self.scope_doc)
        defined = set(defaults)
        for key in self.assigned:
            if key in config and key in fixed:
                # The scope sets it too; a value equal to the update (the same shared object,
                # an int or a short string) left no default behind, but is no new entry.
                if not isinstance(config[key], dict):
                    defined.add(key)
            elif key in config:
                value = config[key]
                if isinstance(value, dict) and value:
                    defined.update(path for path, _ in flatten(value, key))
                else:
                    defined.add(key)
        return ScopeResult(
            config=config, defaults=defaults, docs=dict(self.docs), defined=frozenset(defined)
        )


def _record_defaults(defaults: dict, key: str, own: Any, fixed: Any) -> None:
    if isinstance(own, Mapping) and isinstance(fixed, Mapping):
        for sub_path, sub_value in flatten(own, key):
            defaults[sub_path] = sub_value
    else:
        defaults[key] = own


class _ScopeChecker(ast.NodeVisitor):
    """Collects assigned names and refuses ``return``/``yield`` in a config scope's body."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.assigned: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store) and node.id not in self.assigned:
            self.assigned.append(node.id)

    def _nested(self, node: ast.AST) -> None:
        name = getattr(node, "name", None)
        if name and name not in self.assigned:
            self.assigned.append(name)  # kept out of the config later, by type

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_Lambda(self, node: ast.AST) -> None:
        pass  # names bound in nested scopes are not the scope's locals

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            name = (alias.asname or alias.name).split(".")[0]
            if name not in self.assigned:
                self.assigned.append(name)

    visit_ImportFrom = visit_Import

    def visit_Return(self, node: ast.AST) -> None:
        raise ConfigError(
            f"{self.where} may not return a value: its local variables are the config"
        )

    visit_Yield = visit_YieldFrom = visit_Return


class _InsertFix(ast.NodeTransformer):
    """After every statement, call the function that puts fixed entries back."""

    def _fix_body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            stmt = self.visit(stmt)
            out.append(stmt)
            call = ast.Expr(ast.Call(ast.Name(_FIX, ast.Load()), [], []))
            out.append(ast.copy_location(call, stmt))
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return node
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, field, self._fix_body(body))
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                handler.body = self._fix_body(handler.body)
        return node


def _compile_scope(func: Callable) -> tuple[types.CodeType, list[str], list[str], dict, str | None]:
    where = f"config scope {func.__qualname__!r}"
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise ConfigError(f"cannot read the source of {where}: {exc}") from exc
    tree = ast.parse(source)
    fdef = tree.body[0]
    if not isinstance(fdef, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ConfigError(f"{where} must be a function")
    args = fdef.args
    if args.vararg or args.kwarg or args.defaults or args.kw_defaults or args.kwonlyargs:
        raise ConfigError(f"{where} may only have plain parameters naming earlier entries")
    arg_names = [a.arg for a in args.posonlyargs + args.args]
    body = list(fdef.body)
    scope_doc = None
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            scope_doc = inspect.cleandoc(body[0].value.value)
            body = body[1:]
    checker = _ScopeChecker(where)
    for stmt in body:
        checker.visit(stmt)
    docs = _comment_docs(source, body)
    module = ast.Module(body=_InsertFix()._fix_body(body) if body else [], type_ignores=[])
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, func.__code__.co_firstlineno - 1)
    code = compile(module, func.__code__.co_filename, "exec")
    return code, arg_names, checker.assigned, docs, scope_doc


def _comment_docs(source: str, body: list[ast.stmt]) -> dict[str, str]:
    """Docs of entries: the comment on an assignment's line, else the comments just above."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if not any(re.search(p, text) for p in SETTINGS.CONFIG.IGNORED_COMMENTS):
                    comments[tok.start[0]] = text
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                code_lines.add(tok.start[0])
    except tokenize.TokenError:
        return {}
    docs: dict[str, str] = {}
    for stmt in body:
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets = [stmt.target]
        names = [n for t in targets for n in _target_names(t)]
        if not names:
            continue
        end = stmt.end_lineno or stmt.lineno
        doc = next((comments[n] for n in range(stmt.lineno, end + 1) if n in comments), None)
        if doc is None:
            above: list[str] = []
            line = stmt.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            doc = " ".join(above) if above else None
        if doc:
            for name in names:
                docs.setdefault(name, doc)
    return docs


def _target_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds: ``a``, and each of ``b, (c, d) = ...``."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _target_names(t)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def load_config_file(path: str, pm: PluginManager) -> dict:
    """Read a config file through the ``expkit_load_config_file`` hook."""
    if not os.path.isfile(path):
        raise OSError(f"File not found: {path}")
    entries = pm.hook.expkit_load_config_file(path=path)
    if entries is None and _is_empty_config_file(path):
        return {}
    if entries is None:
        raise ExpkitError(
            f'Configuration file "{path}" has an unsupported extension; use .json, .toml or .yaml'
        )
    if not isinstance(entries, Mapping):
        raise ExpkitError(f'Configuration file "{path}" must hold a mapping at the top level')
    _refuse_non_finite(entries, "", path)
    return dict(entries)


def _refuse_non_finite(value: Any, where: str, path: str) -> None:
    """Refuse inf and NaN, as ``-o`` does: JSON has no word for them (json writes Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"config entry {where!r} in config file {path!r} is {value}, which JSON cannot "
            "store; give a finite number (at most 1.8e308 in size)"
        )
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _refuse_non_finite(sub, join_path(where, str(key)), path)
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            _refuse_non_finite(sub, f"{where}[{i}]", path)


def _is_empty_config_file(path: str) -> bool:
    """Whether ``path`` is a YAML file of only blank lines and ``#`` comments.

    PyYAML reads such a file as ``None``, which the hook takes for "not my format";
    it is an empty config, as an empty TOML file is.
    """
    if os.path.splitext(path)[1].lower() not in (".yaml", ".yml"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return all(not line.strip() or line.lstrip().startswith("#") for line in f)
