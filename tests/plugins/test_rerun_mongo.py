"""``expkit rerun ID`` from a MongoDB store: the in-memory server of tests/mongo_server.py or,
when ``EXPKIT_TEST_MONGO_URL`` is set, a real MongoDB (one fresh database per test)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pymongo = pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")

from expkit_plugins.mongo_store import redact_url  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_expkit, write_project  # noqa: E402
from mongo_server import MemoryMongo  # noqa: E402
from test_mongo_store import _with_db  # noqa: E402
from test_rerun import ENV  # noqa: E402
from test_rerun import EXPERIMENT as RERUN_EXPERIMENT  # noqa: E402

pytestmark = pytest.mark.slow

REAL_URL = os.environ.get("EXPKIT_TEST_MONGO_URL")
USER, PASSWORD = "rerun", "pw-Vb71nLq4"

# test_rerun's experiment, and one whose result has keys MongoDB cannot store as they are.
EXPERIMENT = (
    RERUN_EXPERIMENT
    + """
    def exp_scores(C, _seed):
        return {"val.acc": float(np.random.default_rng(_seed).random() * C), "$n": 1}
"""
)


@pytest.fixture(scope="module")
def server() -> Iterator[MemoryMongo | None]:
    if REAL_URL:
        yield None
        return
    with MemoryMongo(users={USER: PASSWORD}) as memory:
        yield memory


@pytest.fixture
def url(server: MemoryMongo | None) -> Iterator[str]:
    """The URL (with a password on the in-memory server) of a fresh database, dropped after."""
    db = f"expkit_rerun_{uuid.uuid4().hex[:10]}"
    url = _with_db(REAL_URL, db) if REAL_URL else server.url(db, USER, PASSWORD)
    yield url
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(db)


@pytest.fixture
def db(url: str) -> Iterator[Any]:
    """The test database, through a client of its own (what Omniboard would read)."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    yield client.get_default_database()
    client.close()


@pytest.fixture
def project(tmp_path: Path, url: str) -> Path:
    """A project whose ``exp_noise`` ran once into the database: run 1."""
    root = write_project(tmp_path / "proj", {"exp_noise.py": EXPERIMENT})
    done = run_expkit("run", "exp_noise.py::exp_noise", "--store", url, cwd=root, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def losses(db: Any, run_id: int) -> list[float]:
    return db.metrics.find_one({"run_id": run_id, "name": "loss"})["values"]


def test_a_numpy_experiment_is_reproduced_exactly(project: Path, url: str, db: Any) -> None:
    done = run_expkit("rerun", "1", "--store", url, "--check", cwd=project, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = db.runs.find_one({"_id": 1}), db.runs.find_one({"_id": 2})
    assert rerun["status"] == "COMPLETED"
    assert rerun["result"] == original["result"]
    assert rerun["config"] == original["config"]
    assert losses(db, 2) == losses(db, 1)
    # The link names the store without its password.
    assert rerun["meta"]["rerun_of"] == {"store": redact_url(url), "id": 1}
    assert "derived_from" not in rerun["meta"]
    lines = done.stdout.splitlines()
    assert f"recorded the re-run as run 2 in {redact_url(url)} (COMPLETED)" in lines
    assert f"result: identical ({original['result']})" in lines
    assert "metrics: identical (1)" in lines
    assert f"sources: the working copy in {project} is as stored" in lines


def test_an_override_records_the_link_and_reports_the_difference(
    project: Path, url: str, db: Any
) -> None:
    done = run_expkit("rerun", "1", "--store", url, "-o", "C=2.0", cwd=project, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = db.runs.find_one({"_id": 1}), db.runs.find_one({"_id": 2})
    link = {"store": redact_url(url), "id": 1}
    assert rerun["meta"]["rerun_of"] == link
    assert rerun["meta"]["derived_from"] == {**link, "overrides": {"C": 2.0}}
    assert rerun["config"] == {**original["config"], "C": 2.0}
    assert rerun["result"] == pytest.approx(2 * original["result"])
    lines = done.stdout.splitlines()
    assert f"result: differs: {original['result']} (run 1) vs {rerun['result']} (run 2)" in lines
    old, new = losses(db, 1)[0], losses(db, 2)[0]
    assert f"metric loss: first differs at step 0: {old!r} vs {new!r}" in lines


def test_a_result_with_keys_mongodb_renames_is_still_identical(
    project: Path, url: str, db: Any
) -> None:
    done = run_expkit("run", "exp_noise.py::exp_scores", "--store", url, cwd=project, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_expkit("rerun", "2", "--store", url, "--check", cwd=project, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = db.runs.find_one({"_id": 2}), db.runs.find_one({"_id": 3})
    # As Sacred's MongoObserver stores them: "." becomes "," and a leading "$" becomes "@".
    assert set(rerun["result"]) == {"val,acc", "@n"}
    assert rerun["result"] == original["result"]
    assert any(line.startswith("result: identical") for line in done.stdout.splitlines())
