"""``expkit rerun ID`` from a MongoDB store: the in-memory server of tests/mongo_server.py or,
when ``EXPKIT_TEST_MONGO_URL`` is set, a real MongoDB (one fresh database per test)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")

from cli_helpers import run_expkit, write_project
from test_rerun import EXPERIMENT as RERUN_EXPERIMENT

from expkit.utils import redact_url

pytestmark = pytest.mark.slow

# test_rerun's experiment, and one whose result has keys MongoDB cannot store as they are.
EXPERIMENT = (
    RERUN_EXPERIMENT
    + """
    def exp_scores(C, _seed):
        return {"val.acc": float(np.random.default_rng(_seed).random() * C), "$n": 1}
"""
)


@pytest.fixture
def project(tmp_path: Path, mongo_url: str) -> Path:
    """A project whose ``exp_noise`` ran once into the database: run 1."""
    root = write_project(tmp_path / "proj", {"exp_noise.py": EXPERIMENT})
    done = run_expkit("run", "exp_noise.py::exp_noise", "--store", mongo_url, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def losses(db: Any, run_id: int) -> list[float]:
    return db.metrics.find_one({"run_id": run_id, "name": "loss"})["values"]


def test_a_numpy_experiment_is_reproduced_exactly(
    project: Path, mongo_url: str, mongo_db: Any
) -> None:
    done = run_expkit("rerun", "1", "--store", mongo_url, "--check", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = mongo_db.runs.find_one({"_id": 1}), mongo_db.runs.find_one({"_id": 2})
    assert rerun["status"] == "COMPLETED"
    assert rerun["result"] == original["result"]
    assert rerun["config"] == original["config"]
    assert losses(mongo_db, 2) == losses(mongo_db, 1)
    # The link names the store without its password.
    assert rerun["meta"]["rerun_of"] == {"store": redact_url(mongo_url), "id": 1}
    assert "derived_from" not in rerun["meta"]
    lines = done.stdout.splitlines()
    assert f"recorded the re-run as run 2 in {redact_url(mongo_url)} (COMPLETED)" in lines
    assert f"result: identical ({original['result']})" in lines
    assert "metrics: identical (1)" in lines
    assert f"sources: the working copy in {project} is as recorded" in lines


def test_an_override_records_the_link_and_reports_the_difference(
    project: Path, mongo_url: str, mongo_db: Any
) -> None:
    done = run_expkit("rerun", "1", "--store", mongo_url, "-o", "C=2.0", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = mongo_db.runs.find_one({"_id": 1}), mongo_db.runs.find_one({"_id": 2})
    link = {"store": redact_url(mongo_url), "id": 1}
    assert rerun["meta"]["rerun_of"] == link
    assert rerun["meta"]["derived_from"] == {**link, "overrides": {"C": 2.0}}
    assert rerun["config"] == {**original["config"], "C": 2.0}
    assert rerun["result"] == pytest.approx(2 * original["result"])
    lines = done.stdout.splitlines()
    assert f"result: differs: {original['result']} (run 1) vs {rerun['result']} (run 2)" in lines
    old, new = losses(mongo_db, 1)[0], losses(mongo_db, 2)[0]
    assert f"metric loss: first differs at step 0: {old!r} vs {new!r}" in lines


def test_a_result_with_keys_mongodb_renames_is_still_identical(
    project: Path, mongo_url: str, mongo_db: Any
) -> None:
    done = run_expkit("run", "exp_noise.py::exp_scores", "--store", mongo_url, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_expkit("rerun", "2", "--store", mongo_url, "--check", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = mongo_db.runs.find_one({"_id": 2}), mongo_db.runs.find_one({"_id": 3})
    # As Sacred's MongoObserver stores them: "." becomes "," and a leading "$" becomes "@".
    assert set(rerun["result"]) == {"val,acc", "@n"}
    assert rerun["result"] == original["result"]
    assert any(line.startswith("result: identical") for line in done.stdout.splitlines())


def test_a_tampered_source_in_gridfs_is_refused_unless_forced(
    project: Path, mongo_url: str, mongo_db: Any
) -> None:
    import gridfs

    run = mongo_db.runs.find_one({"_id": 1})
    [(name, file_id)] = run["experiment"]["sources"]
    fs = gridfs.GridFS(mongo_db)
    stored = fs.get(file_id)
    recorded, metadata = stored.metadata["md5"], stored.metadata
    changed = stored.read().replace(b"rng.random(n).sum()", b"(rng.random(n).sum() + 1)")
    # Someone rewrote the stored copy in place: same id, same name, the recorded md5 kept.
    fs.delete(file_id)
    fs.put(changed, _id=file_id, filename=stored.filename, metadata=metadata)
    tampered = hashlib.md5(changed).hexdigest()

    refused = run_expkit("rerun", "1", "--store", mongo_url, cwd=project)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert refused.stderr == (
        f"ERROR: run 1: source {name!r} as stored in {redact_url(mongo_url)} has md5 {tampered}, "
        f"not the {recorded} the run recorded: the stored copy was changed after the run; "
        "re-run it anyway with --force\n"
    )
    forced = run_expkit("rerun", "1", "--force", "--store", mongo_url, cwd=project)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (
        f"source {name}: the stored copy has md5 {tampered}, not the recorded {recorded}; "
        "the re-run ran it (--force)"
    ) in forced.stdout.splitlines()
