"""expkit.runs: finding stored runs with filters, sorting and limits, over real stores."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from expkit.errors import UsageError
from expkit.records import RunRecord
from expkit.runs import (
    RunNotFoundError,
    get_run,
    parse_filter,
    probably_dead,
    reader_for_url,
    runs,
    to_dataframe,
)
from expkit_plugins.file_store import FileStorageObserver
from expkit_plugins.tinydb_store import TinyDbObserver

CONFIGS = [
    {"C": 0.5, "dataset": {"name": "iris"}, "lr": 0.1},
    {"C": 1.0, "dataset": {"name": "iris"}, "lr": 0.01},
    {"C": 2.0, "dataset": {"name": "wine"}, "lr": 0.1},
    {"C": 4.0, "dataset": {"name": "iris"}, "lr": 0.1},
]


def record_runs(observer: Any, name: str = "svm") -> None:
    """Run a real experiment once per config into ``observer``; the last one fails."""
    from expkit import Experiment

    ex = Experiment(name)
    ex.observers.append(observer)
    ex.add_config(C=1.0, dataset={"name": "iris"}, lr=0.1)

    @ex.main
    def main(C, dataset, _run):
        print("training with C =", C)
        _run.log_scalar("loss", 1.0 / C)
        if C > 3:
            raise ValueError("diverged")
        return C * 10

    for number, config in enumerate(CONFIGS, 1):
        # Given ids, so that every store numbers the runs alike (TinyDB would pick uuids).
        options = {"--capture": "sys", "--id": str(number)}
        with contextlib.suppress(ValueError):
            ex.run(config_updates=config, options=options)


@pytest.fixture(params=["file", "tinydb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL holding the four runs of :func:`record_runs` (ids 1..4, run 4 FAILED)."""
    if request.param == "file":
        record_runs(FileStorageObserver(tmp_path / "runs"))
        return str(tmp_path / "runs")
    record_runs(TinyDbObserver(tmp_path / "db"))
    return f"tinydb://{tmp_path / 'db'}"


def ids(records: list[RunRecord]) -> list[int]:
    return [int(r.id) if str(r.id).isdigit() else r.id for r in records]


# --- the filter language ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "op", "value"),
    [
        ("C>1", "C", ">", 1),
        ("C <= 0.5", "C", "<=", 0.5),
        ('dataset.name=="iris"', "dataset.name", "==", "iris"),
        ("lr!=0.1", "lr", "!=", 0.1),
        ("status==FAILED", "status", "==", "FAILED"),
        ("layers==[64, 32]", "layers", "==", [64, 32]),
        ("opt-name==adam", "opt-name", "==", "adam"),
        ("flag==True", "flag", "==", True),
    ],
)
def test_filters_parse_into_key_operator_and_literal(text, key, op, value):
    parsed = parse_filter(text)
    assert (parsed.key, parsed.op, parsed.value) == (key, op, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("C=1", "at column 2: expected one of == != < <= > >=; got '=' (compare with '==')"),
        ("C>>1", "at column 3: unexpected '>' after '>'"),
        ("C>", "at column 3: expected a value; got end of input"),
        (">1", "at column 1: expected a key such as C or dataset.name; got '>'"),
        ("", "at column 1: expected a key such as C or dataset.name; got end of input"),
        ("C ~ 1", "at column 3: expected one of == != < <= > >=; got '~'"),
        ("C>1 and D<2", "at column 3: '1 and D<2' is neither a Python literal nor one word"),
        ("name=='iris", 'at column 7: "\'iris" is not a valid Python literal'),
        ("__import__('os').system('x')==1", "at column 11: expected one of"),
        # A time or a duration against another kind of value would match nothing, silently.
        ("start_time>2020", "at column 12: start_time compares with an ISO date or time"),
        ("stop_time<'soon'", "at column 11: stop_time compares with an ISO date or time"),
        ("duration<1s", "at column 10: duration compares with a number of seconds"),
    ],
)
def test_bad_filters_say_where_they_are_wrong(text, message):
    with pytest.raises(UsageError) as info:
        parse_filter(text)
    assert str(info.value).startswith(f"wrong filter: {text}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- runs() over real stores --------------------------------------------------------------------


def test_all_runs_newest_first(store):
    found = runs(store)
    assert ids(found) == [4, 3, 2, 1]
    assert [r.status for r in found] == ["FAILED", "COMPLETED", "COMPLETED", "COMPLETED"]
    assert {r.experiment for r in found} == {"svm"}
    assert found[1].result == 20.0 and found[0].result is None
    assert all(r.captured_out is None and r.metrics is None for r in found)


def test_config_filters(store):
    assert ids(runs(store, where=["C>1"])) == [4, 3]
    assert ids(runs(store, where="C<=0.5")) == [1]
    assert ids(runs(store, where=['dataset.name=="iris"', "lr!=0.1"])) == [2]
    assert ids(runs(store, where=["dataset.name==wine"])) == [3]
    assert ids(runs(store, where=["config.C>=2", "C<4"])) == [3]
    # A run without the key matches no comparison, "!=" included.
    assert ids(runs(store, where=["lr!=0.1"])) == [2]


def test_special_keys(store):
    assert ids(runs(store, where=["status==FAILED"])) == [4]
    assert ids(runs(store, where=["status==completed", "result>=10"])) == [3, 2]
    assert ids(runs(store, where=["id>=3"])) == [4, 3]
    assert ids(runs(store, where=["experiment==svm", "id==2"])) == [2]


def test_experiment_status_and_time_filters(store, tmp_path):
    assert ids(runs(store, status="FAILED")) == [4]
    assert ids(runs(store, status=["completed", "failed"], limit=2)) == [4, 3]
    assert runs(store, experiment="other") == []
    assert len(runs(store, experiment="sv*")) == 4
    second = runs(store, where="id==2")[0].start_time
    assert ids(runs(store, since=second)) == [4, 3, 2]
    assert ids(runs(store, until=second.isoformat())) == [2, 1]
    assert runs(store, since=datetime.datetime(2999, 1, 1)) == []
    assert ids(runs(store, where="start_time<'2999-01-01'", limit=1)) == [4]
    assert runs(store, where="start_time==None") == []  # every run here started


def test_a_mistyped_status_is_an_error_and_an_interrupts_own_is_not(store):
    with pytest.raises(
        UsageError, match=r"^no run has the status 'FALED' \(did you mean 'FAILED'\?\)$"
    ):
        runs(store, status="FALED")
    assert runs(store, status="STOPPED_BY_MY_INTERRUPT") == []  # Sacred's custom STATUS


def test_sorting_and_limit(store):
    assert ids(runs(store, sort="C", descending=False)) == [1, 2, 3, 4]
    assert ids(runs(store, sort="result", limit=2)) == [3, 2]
    # The failed run has no result: it comes last in either direction.
    assert ids(runs(store, sort="result", descending=False)) == [1, 2, 3, 4]
    assert ids(runs(store, sort="id", descending=False)) == [1, 2, 3, 4]
    assert ids(runs(store, sort="dataset.name", descending=False))[-1] == 3
    assert ids(runs(store, sort="duration", limit=1)) != []
    assert runs(store, limit=0) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"where": ["C=>1"]}, "wrong filter: C=>1"),
        ({"since": "yesterday"}, "since='yesterday' is not an ISO date or time"),
        ({"limit": -1}, "limit must be a whole number >= 0"),
    ],
)
def test_bad_arguments_are_usage_errors(store, kwargs, message):
    with pytest.raises(UsageError, match=message):
        runs(store, **kwargs)


def test_get_run_returns_everything(store):
    record = get_run(store, runs(store, where="id==3")[0].id)
    assert record.config["C"] == 2.0 and record.result == 20.0
    assert record.metrics["loss"]["values"] == [0.5]
    assert isinstance(record.metrics["loss"]["timestamps"][0], datetime.datetime)
    assert "training with C = 2.0\n" in record.captured_out
    assert record.experiment_info["name"] == "svm"
    assert record.host["hostname"]
    failed = get_run(store, runs(store, status="FAILED")[0].id)
    assert "ValueError: diverged" in "".join(failed.fail_trace)


def test_unknown_run_is_a_usage_error_and_a_key_error(store):
    with pytest.raises(RunNotFoundError, match=r"^no run 'nope' in the store ") as info:
        get_run(store, "nope")
    assert isinstance(info.value, KeyError) and isinstance(info.value, UsageError)


def test_url_nobody_reads_names_the_known_schemes():
    with pytest.raises(UsageError) as info:
        runs("nosuch://bucket/runs")
    message = str(info.value)
    assert message.startswith("no store plugin reads 'nosuch://bucket/runs'; known schemes: ")
    for scheme in ("file://", "tinydb://", "mongodb://"):
        assert scheme in message


def test_url_password_is_not_shown():
    with pytest.raises(UsageError) as info:
        reader_for_url("nosuch://user:hunter22@host/runs")
    assert "hunter22" not in str(info.value)


def test_missing_store_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"no file store at .*nowhere: the folder does not exist"):
        runs(str(tmp_path / "nowhere"))


# --- probably dead ------------------------------------------------------------------------------

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0)


def running(heartbeat: datetime.datetime | None, start: datetime.datetime | None = None) -> Any:
    start = start or datetime.datetime(2024, 5, 1, 11, 0)
    return RunRecord(id=1, store="s", experiment="e", status="RUNNING", start_time=start,
                     heartbeat=heartbeat)  # fmt: skip


def test_running_without_recent_heartbeat_is_probably_dead():
    assert not probably_dead(running(NOW - datetime.timedelta(seconds=29)), NOW)
    assert probably_dead(running(NOW - datetime.timedelta(seconds=31)), NOW)
    # Omniboard's interval: 120 s means 40 s beats.
    assert not probably_dead(running(NOW - datetime.timedelta(seconds=100)), NOW, 40.0)
    # No heartbeat yet: judged by the start.
    assert probably_dead(running(None), NOW)
    assert not probably_dead(running(None, start=NOW), NOW)
    done = RunRecord(id=1, store="s", experiment="e", status="COMPLETED", start_time=NOW)
    assert not probably_dead(done, NOW + datetime.timedelta(days=1))


def test_aware_now_is_compared_in_utc():
    aware = datetime.datetime(
        2024, 5, 1, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert not probably_dead(running(NOW - datetime.timedelta(seconds=5)), aware)


def test_status_probably_dead_selects_stale_running_runs(tmp_path):
    basedir = tmp_path / "runs"
    record_runs(FileStorageObserver(basedir))
    # A process killed in the middle of run 2 leaves it RUNNING with an old heartbeat.
    run_json = basedir / "2" / "run.json"
    entry = json.loads(run_json.read_text())
    entry.update(status="RUNNING", stop_time=None, heartbeat="2024-05-01T12:00:00.000000")
    run_json.write_text(json.dumps(entry))
    (basedir / "_index" / "runs.jsonl").unlink()
    assert ids(runs(str(basedir), status="PROBABLY_DEAD")) == [2]
    assert ids(runs(str(basedir), status="RUNNING")) == [2]


# --- pandas -------------------------------------------------------------------------------------


def test_to_dataframe_has_a_row_per_run_and_config_columns(store):
    pandas = pytest.importorskip("pandas")
    frame = to_dataframe(runs(store, sort="id", descending=False))
    assert isinstance(frame, pandas.DataFrame)
    assert [int(i) for i in frame.index] == [1, 2, 3, 4]
    assert list(frame["C"]) == [0.5, 1.0, 2.0, 4.0]
    assert list(frame["dataset.name"]) == ["iris", "iris", "wine", "iris"]
    assert list(frame["status"])[-1] == "FAILED"
    assert frame["duration"].iloc[0] >= datetime.timedelta(0)


def test_to_dataframe_prefixes_config_entries_named_like_columns():
    pytest.importorskip("pandas")
    record = RunRecord(id=1, store="s", experiment="e", status="COMPLETED",
                       config={"status": "x", "a": {"b": 1}})  # fmt: skip
    frame = to_dataframe([record])
    assert frame.loc[1, "status"] == "COMPLETED"
    assert frame.loc[1, "config.status"] == "x" and frame.loc[1, "a.b"] == 1
    assert to_dataframe([]).empty


# --- metrics and info keys, keys no run has ---------------------------------------------------


def test_metrics_and_info_keys_filter_and_sort(store):
    # record_runs logs loss = 1/C once per run.
    assert ids(runs(store, where="metrics.loss<1")) == [4, 3]
    assert ids(runs(store, sort="metrics.loss", descending=False)) == [4, 3, 2, 1]
    found = runs(store, where="metrics.loss>=1")
    assert found[0].metrics["loss"]["values"] == [1.0]  # read whole for the filter
    assert ids(runs(store, where="duration>=0")) == [4, 3, 2, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"where": "loss<1"}, "wrong filter: loss<1: 'loss' is not a key of any of the 4 runs "
         "(did you mean 'metrics.loss'?)"),
        ({"where": "CC>1"}, "'CC' is not a key of any of the 4 runs (did you mean 'C'?)"),
        ({"sort": "metrics.acc"}, "cannot sort by 'metrics.acc': 'metrics.acc' is not a key"),
    ],
)  # fmt: skip
def test_a_key_none_of_the_runs_has_is_a_usage_error(store, kwargs, message):
    with pytest.raises(UsageError) as info:
        runs(store, **kwargs)
    assert message in str(info.value)


def test_a_key_absent_from_the_selected_runs_only_is_no_error(store):
    assert runs(store, where="C>100") == []
    assert runs(store, status="FAILED", where="C<1") == []


# --- sorting values of different kinds ---------------------------------------------------------


SORT_VALUES = [0.977, {"acc": 1}, "b", None, 2, [1, 2], "a", float("nan"), True, {"acc": 0}, [1]]


def test_sort_orders_kinds_the_same_way_in_both_directions(tmp_path):
    from expkit import Experiment

    ex = Experiment("kinds")
    ex.add_config(n=0)
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))
    ex.main(_value_number)
    for n in range(len(SORT_VALUES)):
        ex.run(config_updates={"n": n}, options={"--capture": "sys"})
    store = str(tmp_path / "runs")
    up = [r.result for r in runs(store, sort="result", descending=False)]
    down = [r.result for r in runs(store, sort="result")]
    assert up[:2] == [0.977, 2] and down[:2] == [2, 0.977]
    for order in (up, down):
        assert str(order[2]) == "nan" and order[3] is True
        assert set(order[4:6]) == {"a", "b"}
        assert sorted(map(str, order[6:8])) == ["[1, 2]", "[1]"]
        assert order[8:10] in ([{"acc": 0}, {"acc": 1}], [{"acc": 1}, {"acc": 0}])
        assert order[10] is None  # no result: last either way
    assert up[4:6] == ["a", "b"] and down[4:6] == ["b", "a"]
    assert up[6:8] == [[1], [1, 2]] and up[8:10] == [{"acc": 0}, {"acc": 1}]
    assert down[6:8] == [[1, 2], [1]] and down[8:10] == [{"acc": 1}, {"acc": 0}]


def _value_number(n):
    return SORT_VALUES[n]


# --- short ids ----------------------------------------------------------------------------------


def test_short_ids_are_eight_characters_unless_that_is_ambiguous():
    from expkit.runs import short_ids

    store = ["2a1a0c9e11112222", "2a1a0c9e3333", "ffff00001111", "17", "1"]
    shown = short_ids([*store[:3], "17"], among=store)
    assert shown == {
        "2a1a0c9e11112222": "2a1a0c9e1",
        "2a1a0c9e3333": "2a1a0c9e3",
        "ffff00001111": "ffff0000",
        "17": "17",
    }


@pytest.fixture(params=["tinydb", "mongo", "file"])
def named_runs(request, tmp_path):
    """A store whose runs have the ids 2a1a0c9e, 2a1af3b7, 15 and 1 (run 1 then deleted)."""
    if request.param == "tinydb":
        url = f"tinydb://{tmp_path / 'db'}"
    elif request.param == "mongo":
        url = request.getfixturevalue("mongo_url")
    else:
        url = str(tmp_path / "runs")
    from expkit import Experiment
    from expkit.pluginmanager import get_plugin_manager
    from expkit.run import store_for_url

    for run_id in ("2a1a0c9e", "2a1af3b7", "15", "1"):
        ex = Experiment("named")
        ex.main(_own_id)
        store = store_for_url(get_plugin_manager(), url)
        ex.observers.append(store)
        ex.run(options={"--capture": "sys", "--id": run_id})
        if hasattr(store, "close"):
            store.close()
    reader = reader_for_url(url)
    reader.delete_run(1 if request.param == "mongo" else "1")
    if hasattr(reader, "close"):
        reader.close()
    return url


def _own_id(_run):
    return str(_run._id)


def test_a_unique_prefix_names_a_run_in_every_store(named_runs):
    assert get_run(named_runs, "2a1a0").result == "2a1a0c9e"
    assert get_run(named_runs, "2a1af").result == "2a1af3b7"
    assert get_run(named_runs, "15").result == "15"


def test_an_ambiguous_prefix_lists_the_runs_it_could_be(named_runs):
    with pytest.raises(UsageError) as info:
        get_run(named_runs, "2a1a")
    message = str(info.value)
    assert message.startswith("run id '2a1a' is ambiguous in the store ")
    assert message.endswith(": it starts 2 run ids (2a1a0c9e, 2a1af3b7); give more of the id")


def test_a_number_or_a_short_prefix_never_names_a_longer_id(named_runs):
    # Run 1 was deleted: "1" must not stand for run 15.
    with pytest.raises(RunNotFoundError, match=r"^no run '1' in the store "):
        get_run(named_runs, "1")
    with pytest.raises(RunNotFoundError, match=r"^no run '2a1' in the store "):
        get_run(named_runs, "2a1")


def test_experiment_option_takes_the_file_of_module_experiments(tmp_path):
    from mixed_store import record_mixed

    record_mixed(str(tmp_path / "runs"))
    found = runs(str(tmp_path / "runs"), experiment="exp_svm.py")
    assert {r.experiment for r in found} == {"exp_svm.py::exp_svm"} and len(found) == 3
    assert runs(str(tmp_path / "runs"), experiment="exp_svm") == []
