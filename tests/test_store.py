"""expkit/store.py beyond the contract every store keeps: how a URL finds its store."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from expkit import store
from expkit.errors import UsageError
from expkit.observers import RunObserver
from expkit.pluginmanager import create_plugin_manager, hookimpl


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
