"""Metric series cut down for a chart: at most four points per pixel column, shape kept.

A chart ``width`` pixels wide cannot show more than a few points per column, so a
series of a million points is sent as the first, last, smallest and largest point of
each column (the M4 method of Jugel et al., VLDB 2014): the line drawn from them
touches the same pixels as the line through every point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_WIDTH = 4000  # columns: a chart wider than this gains nothing


def arrays_of(metric: dict) -> tuple[np.ndarray, np.ndarray]:
    """:func:`as_arrays` of a metric as readers give it (``{"steps", "values", ...}``)."""
    return as_arrays(metric.get("steps") or (), metric.get("values") or ())


def as_arrays(steps: Sequence[Any], values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values as float arrays sorted by step; points that are no finite number
    dropped (a chart cannot place them: :func:`nonfinite_of` lists them)."""
    xs = _floats(steps)
    ys = _floats(values)
    n = min(len(xs), len(ys))
    xs, ys = xs[:n], ys[:n]
    keep = np.isfinite(xs) & np.isfinite(ys)
    if not keep.all():
        xs, ys = xs[keep], ys[keep]
    if len(xs) > 1 and np.any(xs[1:] < xs[:-1]):
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
    return xs, ys


def summary(metric: dict) -> dict:
    """Points, last, smallest and largest of every value logged (an inf or a NaN too: a
    metric that blew up must not look healthy), and how many values no chart can draw."""
    raw = metric.get("values") or ()
    values = _floats(raw)
    numbers = values[~np.isnan(values)]
    return {
        "count": len(metric.get("steps") or ()),
        "last": float(values[-1]) if len(values) else None,
        "min": float(numbers.min()) if len(numbers) else _nan_or_none(values),
        "max": float(numbers.max()) if len(numbers) else _nan_or_none(values),
        "nonfinite": nonfinite_counts(values),
    }


def nonfinite_of(metric: dict) -> tuple[np.ndarray, np.ndarray]:
    """The steps and values of the points that are logged with a step but whose value
    is NaN, inf or -inf (or no number at all: NaN), in step order."""
    xs = _floats(metric.get("steps") or ())
    ys = _floats(metric.get("values") or ())
    n = min(len(xs), len(ys))
    xs, ys = xs[:n], ys[:n]
    keep = np.isfinite(xs) & ~np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    return xs[order], ys[order]


def nonfinite_counts(values: np.ndarray) -> dict[str, int]:
    """How many of ``values`` are NaN, inf and -inf (only those there are)."""
    counts = {
        "NaN": int(np.isnan(values).sum()),
        "inf": int(np.isposinf(values).sum()),
        "-inf": int(np.isneginf(values).sum()),
    }
    return {k: n for k, n in counts.items() if n}


def _nan_or_none(values: np.ndarray) -> float | None:
    return float("nan") if len(values) else None


def downsample(
    xs: np.ndarray,
    ys: np.ndarray,
    width: int,
    start: float | None = None,
    stop: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``start <= x <= stop`` (``xs`` sorted) an M4 cut keeps for ``width``."""
    lo = 0 if start is None else int(np.searchsorted(xs, start, side="left"))
    hi = len(xs) if stop is None else int(np.searchsorted(xs, stop, side="right"))
    # One point either side of the window, so that lines run to the edges when zoomed in.
    lo, hi = max(lo - 1, 0), min(hi + 1, len(xs))
    xs, ys = xs[lo:hi], ys[lo:hi]
    width = max(1, min(int(width), MAX_WIDTH))
    if len(xs) <= 4 * width:
        return xs, ys
    first, last = xs[0], xs[-1]
    edges = np.linspace(first, last, width + 1)[1:-1]
    starts = np.concatenate(([0], np.searchsorted(xs, edges, side="left")))
    starts = np.unique(starts)  # columns holding no point give repeated starts
    ends = np.append(starts[1:], len(xs))
    column = np.repeat(np.arange(len(starts)), ends - starts)
    lowest = np.minimum.reduceat(ys, starts)
    highest = np.maximum.reduceat(ys, starts)
    picked = np.concatenate(
        (
            starts,
            ends - 1,
            _first_where(ys == lowest[column], column),
            _first_where(ys == highest[column], column),
        )
    )
    picked = np.unique(picked)
    return xs[picked], ys[picked]


def as_list(values: np.ndarray) -> list:
    """``values`` as a list for JSON: whole numbers as ints (steps are), others as floats."""
    if len(values) and np.all(np.mod(values, 1) == 0) and np.all(np.abs(values) < 2**53):
        return values.astype(np.int64).tolist()
    return values.tolist()


def _first_where(mask: np.ndarray, column: np.ndarray) -> np.ndarray:
    """The first index in each column where ``mask`` holds (every column has one)."""
    hits = np.flatnonzero(mask)
    _, first = np.unique(column[hits], return_index=True)
    return hits[first]


def _floats(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)  # None becomes NaN
    except (TypeError, ValueError):
        return np.array([_float(v) for v in values], dtype=float)


def _float(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return float("nan")  # text, lists, ...: not drawn
