"""The SQL store selects runs itself: the same runs, in the same order, as the core would."""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path
from typing import Any

import pytest

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.runs import runs
from expkit.store import open_store
from expkit_plugins.sql_store.storage import SqlStorage

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)
# Values of every kind a config entry or a result may hold, for C and for the result.
VALUES = [1, 2, 2.5, -3, 0, True, False, "a", "b", "B", "é", "10", None, [1, 2], {"x": 1}]
OPS = ["==", "!=", "<", "<=", ">", ">="]
FILTERS = [
    *(f"C{op}{v}" for op, v in itertools.product(OPS, ["1", "2.0", "0", "'a'", "'B'", "'10'"])),
    "opt.lr>0.01", "opt.lr==0.1", "config.C>=1", "result>0.5", "result.acc>0.5",
    "result.acc!=0.9", "result!=0.5", "result!='b'", "result<2", "status==completed",
    "status!=FAILED", "experiment==exp_b",
    "experiment<exp_b", "id>3", "id<='7'", "command==main", "C.x==1", "C.0==1",
    "result=='b'", "missing==1", "missing!=1", "experiment.x==1", "start_time>1",
]  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same runs in an SQLite file, then in a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sql') / 'runs.db'}"
    else:
        url = request.getfixturevalue("module_postgres_url")
    observer = open_store(create_plugin_manager(), url)
    statuses = ["COMPLETED", "FAILED", "RUNNING", "INTERRUPTED"]
    for i, value in enumerate(VALUES * 2):
        config = {"C": value, "opt": {"lr": [0.1, 0.01, 0.001][i % 3]}, "seed": i}
        if i % 7 == 3:
            del config["C"]
        ex_info = {"name": ["exp_a", "exp_b", "exp_c"][i % 3], "base_dir": "/", "sources": []}
        start = None if i % 11 == 5 else T0 + datetime.timedelta(minutes=(i * 7) % 13)
        if start is None:
            observer.queued_event(ex_info, "main", {}, T0, config, {}, None)
            continue
        observer.started_event(ex_info, "main" if i % 2 else "other", {}, start, config, {}, None)
        result = VALUES[(i * 5) % len(VALUES)] if i % 4 else {"acc": [0.9, 0.4, 1][i % 3]}
        status = statuses[i % len(statuses)]
        if status == "COMPLETED":
            observer.completed_event(start, result)
        elif status == "FAILED":
            observer.failed_event(start, ["trace"])
        elif status == "INTERRUPTED":
            observer.interrupted_event(start, status)
    return url


def core_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the store hands every run to the core, which filters and sorts."""
    monkeypatch.setattr(SqlStorage, "capabilities", frozenset({"delete", "edit"}))


def selected(store: str, **kwargs: Any) -> list[Any] | str:
    """The ids ``runs`` selects, or its error (a key no run has)."""
    try:
        return [r.id for r in runs(store, **kwargs)]
    except UsageError as exc:
        return str(exc)


@pytest.mark.parametrize("where", FILTERS)
def test_a_filter_selects_what_the_core_would(store, where, monkeypatch):
    pushed = selected(store, where=[where], sort="start_time", descending=True, limit=5)
    all_pushed = selected(store, where=[where], sort=None)
    core_only(monkeypatch)
    assert pushed == selected(store, where=[where], sort="start_time", descending=True, limit=5)
    assert all_pushed == selected(store, where=[where], sort=None)


@pytest.mark.parametrize(
    "selection",
    [
        {"experiment": "exp_a"},
        {"experiment": "exp_[ab]"},
        {"experiment": "*_c"},
        {"experiment": "exp_?"},
        {"status": "completed,failed"},
        {"status": "probably_dead"},
        {"since": T0 + datetime.timedelta(minutes=5), "until": T0 + datetime.timedelta(minutes=9)},
        {"sort": "id", "descending": True, "limit": 3},
        {"sort": "stop_time", "limit": 4},
        {"sort": "heartbeat"},
        {"sort": "C", "limit": 6},
        {"sort": "result", "descending": True},
        {"sort": "duration"},
        {"limit": 0},
    ],
)
def test_a_selection_and_order_are_what_the_core_would_give(store, selection, monkeypatch):
    pushed = runs(store, **selection)
    core_only(monkeypatch)
    assert [r.id for r in pushed] == [r.id for r in runs(store, **selection)]


def test_a_listing_is_one_query_cut_by_the_database(store, monkeypatch):
    seen = []
    real = SqlStorage.summaries
    monkeypatch.setattr(SqlStorage, "summaries", lambda self: seen.append(1) or real(self))
    assert len(runs(store, where=["C>1"], limit=2)) == 2
    assert seen == []  # selected by SQL, not read whole and filtered


def test_an_unknown_pattern_is_left_to_the_core(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    observer = open_store(create_plugin_manager(), url)
    for name in ["a[1]", "a1", "a_1", "a%1"]:
        observer.started_event({"name": name, "sources": []}, "main", {}, T0, {}, {}, None)
        observer.completed_event(T0, 1)
    assert {r.experiment for r in runs(url, experiment="a_1")} == {"a_1"}
    assert {r.experiment for r in runs(url, experiment="a%1")} == {"a%1"}
    assert {r.experiment for r in runs(url, experiment="a?1")} == {"a_1", "a%1"}
    assert {r.experiment for r in runs(url, experiment="a[[]1]")} == {"a[1]"}
