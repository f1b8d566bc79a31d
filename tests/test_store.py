"""expkit/store.py beyond the contract every store keeps: how a URL finds its store."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_expkit, run_script, write_project

from expkit import store
from expkit.errors import UsageError
from expkit.observers import RunObserver
from expkit.pluginmanager import create_plugin_manager, hookimpl

TOUCHING = """\
    from pathlib import Path

    def exp_touch():
        Path("ran").touch()
"""


class _OldStore(RunObserver):
    """A store written before backends: an observer and a reader from the old hooks."""


class _OldReader:
    def list_runs(self) -> list:
        return []


class _OldPlugin:
    @hookimpl
    def expkit_store_for_url(self, url: str) -> Any:
        return _OldStore() if url.startswith("old://") else None

    @hookimpl
    def expkit_reader_for_url(self, url: str) -> Any:
        return _OldReader() if url.startswith("old://") else None

    @hookimpl
    def expkit_store_schemes(self) -> list[str]:
        return ["old"]


def test_a_plugin_of_the_old_hooks_still_stores_and_reads_and_is_told_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store, "_warned", set())
    pm = create_plugin_manager(plugins=[_OldPlugin()])
    with pytest.warns(DeprecationWarning, match="expkit_store_for_url, which is deprecated"):
        assert isinstance(store.open_store(pm, "old://here"), _OldStore)
    with pytest.warns(DeprecationWarning, match="expkit_reader_for_url, which is deprecated"):
        assert isinstance(store.open_reader(pm, "old://here"), _OldReader)
    with warnings.catch_warnings():  # told once per process, not at every run
        warnings.simplefilter("error")
        store.open_store(pm, "old://again")
        store.open_reader(pm, "old://again")
    with pytest.raises(UsageError, match=r"known schemes: .*old://"):
        store.open_store(pm, "nobody://x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:/x", "a sqlite URL begins sqlite:// (sqlite:///runs.db is runs.db here)"),
        ("sqlite:runs.db", "a sqlite URL begins sqlite:// (sqlite:///runs.db is runs.db here)"),
        ("tinydb:db.json", "a tinydb URL begins tinydb://;"),
    ],
)
def test_a_known_scheme_without_its_slashes_is_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    pm = create_plugin_manager()
    for opened in (store.open_store, store.open_reader):
        with pytest.raises(UsageError, match=re.escape(message)):
            opened(pm, url)
    assert list(tmp_path.iterdir()) == []  # no folder named after the URL
    assert isinstance(store.open_reader(pm, f"./{url}"), store.StoreReader)  # the way out


@pytest.mark.parametrize(
    ("make", "url", "message"),
    [
        ("file", "taken", "file store path 'taken' is a file, not a folder"),
        ("folder", "sqlite:///taken", "'sqlite:///taken' names a folder: give an SQLite file's"),
    ],
)
def test_a_store_path_of_the_wrong_kind_stops_the_run_before_it_runs(
    tmp_path: Path, make: str, url: str, message: str
) -> None:
    # Every run would be refused and wait in the spool for a store that can never take it.
    write_project(tmp_path, {"exp_touch.py": TOUCHING})
    if make == "file":
        (tmp_path / "taken").write_text("in the way\n")
    else:
        (tmp_path / "taken").mkdir()
    done = run_expkit("run", "--store", url, cwd=tmp_path)
    assert done.returncode == 4
    assert done.stderr.startswith(f"ERROR: {message}") and done.stderr.count("\n") == 1
    assert not (tmp_path / "ran").exists()


SACRED_OBSERVER = """\
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("observed")
    ex.observers.append(FileStorageObserver("runs"))

    @ex.automain
    def main():
        print("ran")
        return 1
"""


@pytest.mark.parametrize(
    "command",
    [["expkit", "run"], ["expkit", "run", "--store", "./runs/"], ["script", "-F", "runs"]],
    ids=["default-store", "same-folder-spelled-otherwise", "script-flag"],
)
def test_a_store_named_twice_records_the_run_once(tmp_path: Path, command: list[str]) -> None:
    # The script's own observer and the session's store (or -F) are one folder.
    write_project(tmp_path, {"exp_observed.py": SACRED_OBSERVER})
    if command[0] == "script":
        done = run_script("exp_observed.py", *command[1:], cwd=tmp_path)
    else:
        done = run_expkit(*command[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.isdigit()) == ["1"]


def test_two_stores_of_different_histories_each_keep_the_run_under_an_id_of_their_own(
    tmp_path: Path,
) -> None:
    write_project(tmp_path, {"exp_touch.py": TOUCHING})
    first = run_expkit("run", "--store", "older", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    done = run_expkit("run", "--store", "newer", "--store", "older", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored 1 run(s) in newer: id 1" in done.stdout.splitlines()
    assert "stored 1 run(s) in older: id 2" in done.stdout.splitlines()


def test_an_id_given_to_the_run_is_its_id_in_every_store(tmp_path: Path) -> None:
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("given", interactive=True)
    ex.observers[:] = [FileStorageObserver(tmp_path / "a"), FileStorageObserver(tmp_path / "b")]
    ex.main(lambda: 1)
    run = ex.run(options={"--id": "7"})
    assert [outcome.run_id for outcome in run.stored] == ["7", "7"]
    assert (tmp_path / "a" / "7").is_dir() and (tmp_path / "b" / "7").is_dir()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("mongodb://me:secret@Db.example:27017/lab", "mongodb://db.example/lab?tls=true"),
        ("mongodb://db.example", "mongodb://db.example/sacred"),
        ("postgresql+psycopg://me:pw@db:5432/lab", "postgresql://db/lab?sslmode=require"),
        ("sqlite:///runs.db", "sqlite:///{cwd}/runs.db"),
        ("tinydb://db", "tinydb://{cwd}/db/metadata.json"),
        ("s3://bucket/runs/?region=eu-west-1", "s3://bucket/runs"),
        ("runs", "file://{cwd}/runs/"),
    ],
)
def test_store_identity_is_one_name_per_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one: str, other: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert store.store_identity(one) == store.store_identity(other.format(cwd=tmp_path))
    assert "secret" not in store.store_identity(one) and "pw" not in store.store_identity(one)
    assert store.store_identity(store.store_identity(one)) == store.store_identity(
        one
    )  # as copies record it


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("mongodb://db.example/lab", "mongodb://db.example/other"),
        ("mongodb://db.example/lab", "mongodb://db2.example/lab"),
        ("tinydb://db", "tinydb://db/other.json"),
        ("s3://bucket/runs?endpoint_url=http://a:9000", "s3://bucket/runs"),
        ("runs", "tinydb://runs"),
    ],
)
def test_store_identity_tells_stores_apart(one: str, other: str) -> None:
    assert store.store_identity(one) != store.store_identity(other)


def test_observers_of_one_server_that_write_to_two_places_both_record_the_run(
    mongo_url: str, mongo_db: Any
) -> None:
    # Their URL is one; where they write is not: neither is taken for the other.
    from expkit import Experiment
    from expkit.observers import MongoObserver

    ex = Experiment("two_prefixes", interactive=True)
    db = mongo_db.name
    ex.observers[:] = [
        MongoObserver(mongo_url, db_name=db),
        MongoObserver(mongo_url, db_name=db, collection_prefix="b"),
    ]
    ex.main(lambda: 1)
    ex.run()
    assert mongo_db["runs"].count_documents({}) == 1
    assert mongo_db["b_runs"].count_documents({}) == 1
