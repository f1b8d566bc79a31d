"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _spool_in_tmp_path(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events of failing stores are spooled; tests must not leave them in the working directory.
    monkeypatch.setenv("EXPKIT_SPOOL", str(tmp_path_factory.mktemp("spool")))
