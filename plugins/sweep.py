"""Sweeps: ``--sweep KEY=VALUES`` and ``@expkit.parametrize`` make one item per point.

A point is an item like a parametrized test, ``exp_iris.py::exp_rbf_svm[C=0.1-kernel=rbf]``:
``-k`` and node ids select points, ``--collect-only`` lists them, and every point is a run
of its own with ``meta.sweep = {"id", "index", "size", "params"}``. Grammar of VALUES: a
comma list of ``-o``-style literals, ``range(a[,b[,step]])``, ``linspace(a,b,n)``,
``logspace(a,b,n)`` (powers of ten), or, drawn ``--samples N`` times from ``--sample-seed``
(default: the root ``--seed``): ``uniform(a,b)``, ``loguniform(a,b)``, ``randint(a,b)`` (both
ends included), ``choice(v1,v2,...)``. Values are parsed with :func:`ast.literal_eval`, never
evaluated; a bare word is a string, as for ``-o``.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
from typing import Any

import attrs

from expkit.errors import UsageError
from expkit.nodes import Item, Skip, SweepPoint
from expkit.pluginmanager import hookimpl
from expkit.serialize import to_data
from expkit.utils import parse_literal

_GRID = ("range", "linspace", "logspace")
_RANDOM = ("uniform", "loguniform", "randint", "choice")
_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", re.DOTALL)
_OPENERS = {"[": "]", "(": ")", "{": "}"}


@attrs.frozen
class Sweep:
    """One ``--sweep``: a key and its values, or the distribution its values are drawn from."""

    key: str
    values: tuple = ()
    draw: tuple[str, tuple] | None = None  # ("uniform", (a, b)), ...; None for a grid

    def sample(self, rng: Any) -> Any:
        """One value drawn from the distribution with ``rng`` (a :class:`random.Random`)."""
        name, args = self.draw  # type: ignore[misc]
        if name == "uniform":
            return rng.uniform(*args)
        if name == "loguniform":
            return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
        if name == "randint":
            return rng.randint(*args)
        return args[rng.randrange(len(args))]


@attrs.frozen
class SweepPlan:
    """The parsed ``--sweep`` options of a session and how many random samples to draw."""

    sweeps: tuple[Sweep, ...]
    samples: int | None
    seed: int | None  # where the random points come from (--sample-seed, --seed, or drawn)
    # The option that draws the same points again: --seed when the points came from it (it
    # also fixes every run's seed, part of the sweep's id), else --sample-seed, which fixes
    # only the points: a sweep started without --seed resumes with it.
    repeat: str = "--sample-seed"

    def points(self) -> list[dict[str, Any]]:
        """The points of the command-line sweeps: the grid's product, times the samples."""
        grid = [s for s in self.sweeps if s.draw is None]
        drawn = [s for s in self.sweeps if s.draw is not None]
        rows = [dict(zip([s.key for s in grid], combo)) for combo in _product(grid)]
        if not drawn:
            return rows
        import random  # only random search needs it

        rng = random.Random(self.seed)
        return [
            {**row, **{s.key: s.sample(rng) for s in drawn}}
            for row in rows
            for _ in range(self.samples or 0)
        ]


def _product(sweeps: list[Sweep]) -> list[tuple]:
    return list(itertools.product(*(s.values for s in sweeps)))


# --- the grammar ---------------------------------------------------------------------------


def parse_sweep(text: str) -> Sweep:
    """Parse ``KEY=VALUES``; a mistake is a one-line :class:`UsageError` naming the option."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _error(text, "write --sweep KEY=VALUES, e.g. --sweep C=0.1,1,10")
    if any(not part.isidentifier() for part in key.split(".")):
        raise _error(text, f"{key!r} is not a config key")
    if not values.strip():
        raise _error(text, "no values after '='")
    call = _CALL.fullmatch(values)
    if call is not None and _balanced(call.group(2)):
        name, inner = call.group(1), call.group(2)
        if name not in _GRID + _RANDOM:
            known = ", ".join(_GRID + _RANDOM)
            raise _error(text, f"unknown function {name}(); use a comma list or one of {known}")
        # choice() takes values as a comma list does (a bare word is a string); the other
        # functions take numbers, and a word there is a mistake.
        read = _value if name == "choice" else _literal
        args = [read(text, part) for part in _split(text, inner, call=True)]
        if name in _GRID:
            return Sweep(key, values=tuple(_grid(text, name, args)))
        return Sweep(key, draw=(name, _checked_draw(text, name, args)))
    return Sweep(key, values=tuple(_value(text, part) for part in _split(text, values)))


def _error(text: str, what: str) -> UsageError:
    return UsageError(f"malformed --sweep {text!r}: {what}")


def _balanced(text: str) -> bool:
    try:
        _split("", text, call=True)
    except UsageError:
        return False
    return True


def _split(text: str, values: str, call: bool = False) -> list[str]:
    """``values`` cut at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], [], "", 0
    for i, char in enumerate(values):
        if quote:
            if char == quote and values[i - 1] != "\\":
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _OPENERS:
            depth.append(_OPENERS[char])
        elif char in ")]}":
            if not depth or depth.pop() != char:
                raise _error(text, f"unbalanced {char!r} at column {i + 1} of the values")
        elif char == "," and not depth:
            parts.append(values[start:i])
            start = i + 1
    if quote or depth:
        raise _error(text, "a quote or bracket is not closed")
    parts.append(values[start:])
    if parts == [""] and call:
        return []  # f()
    if any(not p.strip() for p in parts):
        raise _error(text, "an empty value between commas")
    return [p.strip() for p in parts]


def _value(text: str, part: str) -> Any:
    try:
        return parse_literal(part)
    except ValueError as exc:
        raise _error(text, str(exc)) from None


def _literal(text: str, part: str) -> Any:
    try:
        ast.literal_eval(part)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _error(text, f"{part!r} is not a Python literal") from None
    # As -o reads it: 1e400 (inf, which JSON cannot store) is refused in the same words.
    return _value(text, part)


def _numbers(text: str, name: str, args: list, count: tuple[int, ...], whole: bool) -> list:
    if len(args) not in count:
        wanted = " or ".join(map(str, count))
        raise _error(text, f"{name}() takes {wanted} numbers, got {len(args)}")
    kind = int if whole else (int, float)
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, kind):
            what = "whole numbers" if whole else "numbers"
            raise _error(text, f"{name}() takes {what}, got {arg!r}")
        if not whole:
            _as_float(text, arg)
    return args


def _as_float(text: str, number: int | float) -> float:
    """``number`` as a float; an int beyond the largest float is a one-line error."""
    try:
        return float(number)
    except OverflowError:
        raise _error(
            text,
            f"an int of {len(str(abs(number)))} digits is beyond the largest float; "
            "give a number below 1.8e308",
        ) from None


def _check_width(text: str, name: str, low: float, high: float) -> None:
    # Points are low + (high - low) * t: a width beyond the largest float makes them inf
    # (or nan), outside the range the user gave and not storable as JSON.
    if not math.isfinite(_as_float(text, high) - _as_float(text, low)):
        raise _error(
            text,
            f"{name}() from {low!r} to {high!r} spans more than the largest float "
            "(1.8e308); give a narrower range",
        )


def _rounded(value: float) -> float:
    # Rounded to 15 digits: 0.30000000000000004 is float noise, not a value anyone chose.
    # Not next to the largest float, which 15 digits would round up to inf.
    rounded = float(f"{value:.15g}")
    return rounded if math.isfinite(rounded) else value


def _power_of_ten(text: str, exponent: float) -> float:
    try:
        return _rounded(10.0**exponent)
    except OverflowError:
        raise _error(
            text,
            f"logspace() gives 10**{exponent:g}, beyond the largest float; "
            "give exponents up to 308",
        ) from None


def _grid(text: str, name: str, args: list) -> list:
    if name == "range":
        _numbers(text, name, args, (1, 2, 3), whole=True)
        if len(args) == 3 and args[2] == 0:
            raise _error(text, "range() step must not be 0")
        values = list(range(*args))
    else:
        start, stop, n = _numbers(text, name, args, (3,), whole=False)
        if isinstance(n, float) or n < 1:
            raise _error(text, f"{name}(a, b, n) needs a whole n >= 1, got {n!r}")
        _check_width(text, name, start, stop)
        start, stop = float(start), float(stop)
        steps = [start + (stop - start) * i / (n - 1) for i in range(n)] if n > 1 else [start]
        values = [_rounded(v) for v in steps]
        if name == "logspace":
            values = [_power_of_ten(text, v) for v in values]
    if not values:
        raise _error(text, f"{name}({', '.join(map(repr, args))}) gives no values")
    return values


def _checked_draw(text: str, name: str, args: list) -> tuple:
    if name == "choice":
        if not args:
            raise _error(text, "choice() needs at least one value")
        return tuple(args)
    low, high = _numbers(text, name, args, (2,), whole=name == "randint")
    if name == "randint" and low > high:
        raise _error(text, f"randint(a, b) needs a <= b, got {low} > {high}")
    if name != "randint" and not low < high:
        raise _error(text, f"{name}(a, b) needs a < b")
    if name == "uniform":
        _check_width(text, name, low, high)
    if name == "loguniform" and low <= 0:
        raise _error(text, "loguniform(a, b) needs 0 < a")
    return (low, high)


def make_plan(option: Any) -> SweepPlan:
    """The sweep plan of the command line; every mistake is found here, before anything runs."""
    sweeps = [parse_sweep(text) for text in option.sweeps]
    keys = [s.key for s in sweeps]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--sweep {key}=... is given twice; give all its values in one")
    random_sweeps = [s for s in sweeps if s.draw is not None]
    samples = option.samples
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be 1 or more, got {samples}")
    if random_sweeps and samples is None:
        name = random_sweeps[0].draw[0]  # type: ignore[index]
        raise UsageError(
            f"--sweep {random_sweeps[0].key}={name}(...) draws random values: "
            "say how many points with --samples N"
        )
    if samples is not None and not random_sweeps:
        raise UsageError(
            "--samples needs a random --sweep (uniform, loguniform, randint or choice)"
        )
    if option.sample_seed is not None and not random_sweeps:
        raise UsageError(
            "--sample-seed needs a random --sweep (uniform, loguniform, randint or choice)"
        )
    if option.sample_seed is not None or option.seed is None:
        seed = option.sample_seed
        if random_sweeps and seed is None:
            import random

            seed = random.SystemRandom().randrange(2**31)
        # With --seed too, the runs' seeds (and the sweep's id) come from it: both repeat.
        both = f"--seed {option.seed} " if option.seed is not None else ""
        return SweepPlan(tuple(sweeps), samples, seed, repeat=both + "--sample-seed")
    return SweepPlan(tuple(sweeps), samples, option.seed, repeat="--seed")


# --- points as items -----------------------------------------------------------------------


def id_text(value: Any) -> str:
    """How a value shows in a node id: short, no spaces (``0.1``, ``rbf``, ``[64,64]``)."""
    if isinstance(value, str):
        return value if value and re.fullmatch(r"[\w.:+\-/]+", value) else json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 10 else format(value, ".6g")
    if isinstance(value, (bool, int)) or value is None:
        return repr(value)
    try:
        return json.dumps(to_data(value), separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value).replace(" ", "")


def _dimensions(item: Item, plan: SweepPlan, fixed: set[str]) -> list[list[dict]]:
    """The parametrize marks of ``item`` the command line leaves, each a list of partial points."""
    cli_keys = {s.key for s in plan.sweeps} | fixed
    dims = []
    for mark in getattr(item.experiment, "parametrize", ()):
        if cli_keys & set(mark.names):
            continue  # the command line wins: -o fixes the entry, --sweep gives its values
        dims.append([dict(zip(mark.names, row)) for row in mark.values])
    return dims


def expand(item: Item, plan: SweepPlan, fixed: dict[str, Any], named: list[str]) -> list[Item]:
    """The points of ``item``: its parametrize marks times the command-line sweeps."""
    dims = _dimensions(item, plan, set(fixed))
    cli_points = plan.points() if plan.sweeps else [{}]
    if not dims and not plan.sweeps:
        return [item]
    points = []
    for combo in itertools.product(*dims):
        base: dict[str, Any] = {}
        for part in combo:
            base.update(part)
        points.extend({**base, **cli} for cli in cli_points)
    sweep_id = _sweep_id(item.nodeid, fixed, named, points)
    ids = [
        "-".join(f"{k}={id_text(v)}" for k, v in point.items()) or str(i)
        for i, point in enumerate(points)
    ]
    seen: dict[str, int] = {}
    for text in ids:
        seen[text] = seen.get(text, 0) + 1
    counters: dict[str, int] = {}
    items = []
    for index, (point, text) in enumerate(zip(points, ids)):
        if seen[text] > 1:  # the same values twice (a choice drawn again): number them, as pytest
            counters[text] = counters.get(text, -1) + 1
            text = f"{text}-{counters[text]}"
        name = f"{item.name}[{text}]"
        nodeid = f"{item.nodeid}[{text}]"
        keywords = item.keywords | {nodeid, name, *(f"{k}={id_text(v)}" for k, v in point.items())}
        items.append(
            attrs.evolve(
                item,
                nodeid=nodeid,
                name=name,
                keywords=frozenset(keywords),
                params=to_data(point),
                sweep=SweepPoint(sweep_id, index, len(points), to_data(point)),
            )
        )
    return items


def _sweep_id(nodeid: str, fixed: dict, named: list[str], points: list[dict]) -> str:
    # The same command gives the same id: a sweep resumed with --skip-completed stays one.
    import hashlib

    text = json.dumps([nodeid, to_data(fixed), named, to_data(points)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


# --- hooks -------------------------------------------------------------------------------


@hookimpl
def expkit_addoption(parser: Any) -> None:
    group = parser.getgroup("sweeps", "sweeps and parallel runs")
    group.addoption(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="run once per value: a comma list, range(), linspace(), logspace(), or "
        "uniform(), loguniform(), randint(), choice() with --samples; repeatable (product)",
    )
    group.addoption("--samples", type=int, default=None, metavar="N", help="random points to draw")
    group.addoption(
        "--sample-seed",
        type=int,
        default=None,
        metavar="N",
        help="draw the random points from N (default: --seed, else a fresh seed, printed); "
        "unlike --seed, it leaves every run its own seed",
    )
    group.addoption(
        "--skip-completed",
        action="store_true",
        help="run only points without a COMPLETED run of the same experiment and config",
    )
    group.addoption(
        "--maximize",
        action="store_true",
        help="the best point has the highest result (default: the lowest)",
    )
    group.addoption(
        "--objective",
        default=None,
        metavar="KEY",
        help="what 'best' compares: a key of a dict result, or a metric's last value",
    )


def plan_of(config: Any) -> SweepPlan | None:
    """The session's sweep plan, made at configure time (``None`` for other commands)."""
    return getattr(config.option, "sweep_plan", None)


@hookimpl
def expkit_configure(config: Any) -> None:
    if config.command == "run" and hasattr(config.option, "sweeps"):
        config.option.sweep_plan = make_plan(config.option)


@hookimpl(wrapper=True)
def expkit_collect_file(path: Any, config: Any) -> Any:
    results = yield
    plan = plan_of(config)
    if plan is None:
        return results
    from expkit_plugins.session import parse_overrides

    fixed = parse_overrides(config.option.overrides)
    clash = sorted(set(fixed) & {s.key for s in plan.sweeps})
    if clash:
        raise UsageError(f"{clash[0]} is both fixed with -o and swept with --sweep; drop one")
    named = list(config.option.named)
    if config.option.seed is not None:
        fixed["seed"] = config.option.seed
    expanded = []
    for nodes in results:
        if nodes:
            nodes = [
                point
                for node in nodes
                for point in (
                    expand(node, plan, fixed, named) if isinstance(node, Item) else [node]
                )
            ]
        expanded.append(nodes)
    return expanded


@hookimpl(trylast=True)
def expkit_collection_modifyitems(config: Any, items: list) -> None:
    if config.command == "run" and getattr(config.option, "skip_completed", False):
        mark_completed(config, items)


@hookimpl
def expkit_report_header(config: Any) -> list[str]:
    session = config.session
    plan = plan_of(config)
    if session is None or plan is None:
        return []
    sweeps: dict[str, list] = {}
    for item in session.items:
        if item.sweep is not None:
            sweeps.setdefault(item.sweep.id, []).append(item)
    lines = []
    for sweep_id, items in sweeps.items():
        first = items[0]
        line = f"sweep {sweep_id}: {first.sweep.size} points of {first.nodeid.split('[')[0]}"
        if len(items) != first.sweep.size:
            line += f" ({len(items)} selected)"
        lines.append(line)
    if any(s.draw is not None for s in plan.sweeps):
        repeat = f"{plan.repeat} {plan.seed}"
        lines.append(f"random points drawn with seed {plan.seed} ({repeat} repeats them)")
    return lines


@hookimpl
def expkit_terminal_summary(terminalreporter: Any) -> None:
    session = terminalreporter.config.session
    if session is None or terminalreporter.config.option.collect_only:
        return
    items = {item.nodeid: item for item in session.items}
    sweeps: dict[str, list[tuple[Item, Any]]] = {}
    for report in session.reports:
        item = items.get(report.nodeid)
        if item is not None and item.sweep is not None:
            sweeps.setdefault(item.sweep.id, []).append((item, report))
    for sweep_id, rows in sweeps.items():
        for line in sweep_table(sweep_id, rows, terminalreporter.config.option):
            terminalreporter.write_line(line)


# --- resuming and the end table ------------------------------------------------------------


def _config_key(config: dict, keep_seed: bool) -> str:
    entries = {k: v for k, v in config.items() if keep_seed or k != "seed"}
    return json.dumps(to_data(entries), sort_keys=True)


def mark_completed(config: Any, items: list[Item]) -> None:
    """Mark the items that have a COMPLETED run of the same experiment and config in a store.

    The seed counts only when it is set (``--seed``, ``-o seed=``, a sweep over it):
    otherwise every run draws its own.
    """
    from expkit.resolve import resolve_config
    from expkit.runs import runs
    from expkit.store import NoStoreError
    from expkit.utils import redact_url
    from expkit_plugins.session import parse_overrides, store_urls

    done: dict[tuple[str, bool, str], Any] = {}
    for url in store_urls(config):
        try:
            records = runs(url, status="COMPLETED", sort=None, plugin_manager=config.pluginmanager)
        except NoStoreError:
            continue  # a store not made yet holds no runs
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--skip-completed cannot read {redact_url(url)}: {exc}") from None
        for record in sorted(records, key=lambda r: str(r.id)):
            for keep_seed in (True, False):
                key = (record.experiment, keep_seed, _config_key(record.config, keep_seed))
                done.setdefault(key, record)
    fixed = parse_overrides(config.option.overrides)
    if config.option.seed is not None:
        fixed["seed"] = config.option.seed
    named = list(config.option.named)
    for item in items:
        updates = {**fixed, **item.params}
        try:
            resolved = dict(resolve_config(item.experiment, updates, named))
        except Exception:
            continue  # the run itself will say what is wrong
        keep_seed = "seed" in updates
        record = done.get((item.experiment.name, keep_seed, _config_key(resolved, keep_seed)))
        if record is not None:
            reason = f"completed before as run {record.id}"
            item.skip = Skip(reason, record.id, record.result)


def objective(report: Any, key: str | None) -> float | None:
    """The number a report's run is judged by: its result, a key of it, or a metric."""
    value = report.result
    if key is not None:
        if isinstance(value, dict) and key in value:
            value = value[key]
        else:
            value = report.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return value


def sweep_table(sweep_id: str, rows: list[tuple[Item, Any]], option: Any) -> list[str]:
    """The end-of-session table of one sweep's points, the best marked."""
    from expkit_plugins.runs import table

    rows = sorted(rows, key=lambda pair: pair[0].sweep.index)  # type: ignore[union-attr]
    keys: dict[str, None] = {}
    for item, _ in rows:
        keys.update(dict.fromkeys(item.params))
    key = option.objective
    label = key or "result"
    scored = [
        (objective(report, key), index)
        for index, (_, report) in enumerate(rows)
        if report.ok or report.status == "SKIPPED"
    ]
    scored = [(value, index) for value, index in scored if value is not None]
    best = None
    if scored:
        pick = max if option.maximize else min
        best = pick(scored, key=lambda pair: pair[0])[1]
    header = ["#", *keys, "status", label, "run"]
    body = []
    for index, (item, report) in enumerate(rows):
        shown = objective(report, key) if key else report.result
        body.append(
            [
                str(item.sweep.index),  # type: ignore[union-attr]
                *(id_text(item.params[k]) if k in item.params else "" for k in keys),
                report.status,
                "" if shown is None else _short(shown),
                "" if report.run_id is None else str(report.run_id),
            ]
        )
        if index == best:
            body[-1][-1] += "  <- best"
    first = rows[0][0]
    base = first.nodeid.split("[")[0]
    size = first.sweep.size  # type: ignore[union-attr]
    lines = [f"sweep {sweep_id}: {base}, {len(rows)} of {size} points"]
    lines += table(header, body).split("\n")
    direction = "highest" if option.maximize else "lowest"
    if best is not None:
        item, report = rows[best]
        lines.append(
            f"best ({direction} {label}): {item.name[len(item.originalname) :]} "
            f"{label}={_short(objective(report, key))}"
            + ("" if report.run_id is None else f", run {report.run_id}")
        )
    else:
        lines.append(f"best: none (no completed point has a number as {label}; see --objective)")
    return lines


def _short(value: Any, width: int = 24) -> str:
    text = format(value, ".6g") if isinstance(value, float) else json.dumps(to_data(value))
    return text if len(text) <= width else text[: width - 3] + "..."
