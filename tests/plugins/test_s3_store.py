"""The S3 store beyond the store contract: Sacred's ``S3Observer``, the layout it leaves,
metrics in segments, ids, credentials, a server that goes away, and the commands on S3.

Every test talks to moto's S3 server on 127.0.0.1 (``tests/s3_server.py``) through real
boto3 clients; what the contract suite checks for every store is not repeated here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    assert_not_printed,
    run_expkit,
    run_script,
    start_expkit,
    write_project,
)
from s3_server import KEY_ID, SECRET, MotoS3, client_for, object_key, stored_objects

import expkit
from expkit.errors import UsageError
from expkit.pluginmanager import get_plugin_manager
from expkit.store import open_reader, open_store
from expkit_plugins.file_store import FileStoreReader
from expkit_plugins.gcs import INSTEAD
from expkit_plugins.s3_store.storage import SEGMENT_BYTES, S3Observer, S3Storage

pytest.importorskip("boto3")

T1 = datetime.datetime(1999, 5, 4, 3, 2, 1, 0)
T2 = datetime.datetime(1999, 5, 5, 5, 5, 5, 5)

EXPERIMENT = """\
import os
import time

import expkit

ex = expkit.Experiment("s3demo")


@ex.config
def cfg():
    lr = 0.5
    wait_for = ""
    data = "data.csv"


@ex.automain
def main(lr, wait_for, data, _run):
    print("training with", lr)
    _run.add_resource(data)
    if wait_for:
        print("waiting", flush=True)
        while not os.path.exists(wait_for):
            time.sleep(0.05)
    for step in range(5):
        _run.log_scalar("loss", lr / (step + 1), step)
    _run.info["best"] = lr
    with open("model.txt", "w") as f:
        f.write(f"weights {lr}\\n")
    _run.add_artifact("model.txt")
    return lr * 2
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose experiment reads a resource, logs, keeps an artifact and may wait."""
    return write_project(tmp_path / "proj", {"exp_s3.py": EXPERIMENT, "data.csv": "x\n1\n"})


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _keys(url: str) -> dict[str, bytes]:
    """The store's objects by key relative to its prefix."""
    _, prefix = object_key(url, "")
    return {k.removeprefix(prefix + "/"): v for k, v in stored_objects(url).items()}


def _columns(first: int, count: int) -> dict[str, dict]:
    steps = list(range(first, first + count))
    return {
        "loss": {
            "steps": steps,
            "values": [s / 7 for s in steps],
            "timestamps": [1_700_000_000 + s / 100 for s in steps],
        }
    }


def _start(obs: Any, config: dict | None = None) -> Any:
    info = {"name": "demo", "base_dir": os.getcwd(), "sources": [], "mainfile": None}
    return obs.started_event(info, "main", {"hostname": "h"}, T1, config or {}, {}, None)


# --- Sacred's S3Observer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "valid"),
    [
        ("hi", False),
        ("this_bucket_is_invalid", False),
        ("this-bucket-is-valid", True),
        ("this-bucket.is-valid", True),
        ("this-bucket..is-invalid", False),
        ("-starts-with-a-hyphen", False),
        ("Upper-Case", False),
        ("192.168.5.4", False),
    ],
)
def test_bucket_names_follow_sacreds_rules(s3_env: None, bucket: str, valid: bool) -> None:
    if valid:
        assert S3Observer(bucket=bucket, basedir="some-tests", region="us-west-2").bucket == bucket
        return
    with pytest.raises(ValueError, match="does not follow AWS's rules") as refused:
        S3Observer(bucket=bucket, basedir="some-tests", region="us-west-2")
    assert isinstance(refused.value, UsageError)  # one line on expkit's command line too


def test_the_constructor_and_equality_are_sacreds(s3_env: None) -> None:
    obs = S3Observer("pytest-s3-observer-bucket", "some-tests", region="us-west-2")
    assert (obs.bucket, obs.basedir, obs.priority, obs.region) == (
        "pytest-s3-observer-bucket",
        "some-tests",
        20,
        "us-west-2",
    )
    assert (obs.resource_dir, obs.source_dir) == ("some-tests/_resources", "some-tests/_sources")
    assert obs.dir is None and obs.run_entry is None
    same = S3Observer("pytest-s3-observer-bucket", "some-tests", region="us-west-2", priority=5)
    assert obs == same and hash(obs) == hash(same)
    assert obs != S3Observer("pytest-s3-observer-bucket", "another/dir", region="us-west-2")
    assert obs != S3Observer("other-bucket", "some-tests", region="us-west-2")
    custom = S3Observer("pytest-s3-observer-bucket", "exp", "shared/res", "shared/src")
    assert (custom.resource_dir, custom.source_dir) == ("shared/res", "shared/src")


def test_the_observer_records_as_sacreds_did(
    s3_server: MotoS3, s3_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # S3Observer takes Sacred's arguments only: the service comes from boto3's configuration.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    bucket = f"expkit-test-{uuid.uuid4().hex[:12]}"
    obs = S3Observer(bucket=bucket, basedir="some-tests", region="us-west-2")
    ex_info = {"name": "test_exp", "sources": [], "doc": "", "base_dir": "/tmp"}
    sample = {
        "ex_info": ex_info,
        "command": "run",
        "host_info": {"hostname": "test_host", "cpu_count": 1, "python_version": "3.4"},
        "start_time": T1,
        "config": {"config": "True", "foo": "bar", "answer": 42},
        "meta_info": {"comment": "test run"},
        "_id": None,
    }
    first = obs.started_event(**sample)
    assert first == 1 and obs.dir == "some-tests/1"
    client = client_for(s3_server.url(bucket))
    # The bucket was missing: it is made, in the observer's region.
    location = client.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == "us-west-2"

    def stored(key: str) -> Any:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    assert client.get_object(Bucket=bucket, Key="some-tests/1/cout.txt")["Body"].read() == b""
    assert stored("some-tests/1/config.json") == sample["config"]
    run = stored("some-tests/1/run.json")
    assert (run["command"], run["status"], run["heartbeat"]) == ("run", "RUNNING", None)
    assert (run["host"], run["meta"]) == (sample["host_info"], {"comment": "test run"})
    assert (run["resources"], run["artifacts"]) == ([], [])
    assert datetime.datetime.fromisoformat(run["start_time"]) == T1
    assert {k: run["experiment"][k] for k in ex_info} == ex_info

    second = obs.started_event(**sample)
    assert second == first + 1  # ints, as Sacred's observer gave them
    with pytest.raises(UsageError, match="run 1 already exists"):
        obs.started_event(**{**sample, "_id": 1})
    artifact = tmp_path / "artifact.py"
    artifact.write_text("import sacred\n")
    obs.started_event(**sample)
    obs.artifact_event("test_artifact.py", str(artifact))
    assert obs.run_entry["artifacts"][0].name == "test_artifact.py"
    key = "some-tests/3/test_artifact.py"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"import sacred\n"
    obs.interrupted_event(T2, "SERVER_EXPLODED")
    assert stored("some-tests/3/run.json")["status"] == "SERVER_EXPLODED"
    obs.queued_event(**{k: v for k, v in sample.items() if k != "start_time"}, queue_time=T2)
    assert stored("some-tests/4/run.json")["status"] == "QUEUED"


# --- the layout ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_script_run_leaves_sacreds_layout_which_reads_as_a_file_store(
    s3_url: str, project: Path, tmp_path: Path
) -> None:
    done = run_script("exp_s3.py", "-S", s3_url, "with", "lr=0.25", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    source = (project / "exp_s3.py").read_bytes()
    objects = _keys(s3_url)
    source_key = f"_sources/exp_s3_{_md5(source)}.py"
    resource_key = f"_resources/data_{_md5((project / 'data.csv').read_bytes())}.csv"
    assert sorted(objects) == sorted(
        [
            "1/run.json",
            "1/config.json",
            "1/cout.txt",
            "1/metrics.json",
            "1/info.json",
            "1/model.txt",
            source_key,
            resource_key,
        ]
    )  # the metrics log's segments are gone once metrics.json is complete
    run = json.loads(objects["1/run.json"])
    assert (run["status"], run["result"], run["command"]) == ("COMPLETED", 0.5, "main")
    assert run["experiment"]["sources"] == [["exp_s3.py", source_key]]
    assert run["resources"] == [[str(project / "data.csv"), resource_key]]
    assert run["artifacts"] == ["model.txt"]
    assert run["meta"]["options"]["--s3"] == s3_url
    assert json.loads(objects["1/config.json"])["lr"] == 0.25
    assert json.loads(objects["1/info.json"]) == {"best": 0.25}
    assert b"training with 0.25\n" in objects["1/cout.txt"]
    loss = json.loads(objects["1/metrics.json"])["loss"]
    assert (loss["steps"], loss["values"]) == ([0, 1, 2, 3, 4], [0.25 / (s + 1) for s in range(5)])
    assert all(datetime.datetime.fromisoformat(t) for t in loss["timestamps"])
    assert objects[source_key] == source and objects["1/model.txt"] == b"weights 0.25\n"

    # The prefix copied to a disk is a file store (what `aws s3 sync` gives).
    copy = tmp_path / "copy"
    for key, data in objects.items():
        (copy / key).parent.mkdir(parents=True, exist_ok=True)
        (copy / key).write_bytes(data)
    reader = FileStoreReader(copy)
    record = reader.get_run("1")
    assert (record.status, record.result, record.config["lr"]) == ("COMPLETED", 0.5, 0.25)
    assert record.metrics["loss"]["values"] == loss["values"]
    assert reader.read_artifact("1", "model.txt") == b"weights 0.25\n"
    assert reader.read_resource("1", str(project / "data.csv")) == b"x\n1\n"
    assert reader.read_source("1", "exp_s3.py") == source


def test_runs_written_by_sacreds_observer_are_read(s3_url: str) -> None:
    bucket, _ = object_key(s3_url, "")
    client = client_for(s3_url)
    client.create_bucket(Bucket=bucket)
    run = {
        "experiment": {
            "name": "old",
            "base_dir": "/home/me/proj",
            "sources": [["exp.py", "_sources/exp_0123456789abcdef0123456789abcdef.py"]],
            "dependencies": ["sacred==0.8.7"],
            "repositories": [],
            "mainfile": "exp.py",
        },
        "command": "main",
        "host": {"hostname": "box"},
        "start_time": "2023-01-02T03:04:05",  # Sacred dropped zero microseconds
        "meta": {"command": "main"},
        "status": "COMPLETED",
        # Sacred's S3Observer kept a resource's whole key, not one relative to basedir.
        "resources": [["/data/x.csv", "runs/_resources/x_0123456789abcdef0123456789abcdef.csv"]],
        "artifacts": ["model.bin"],
        "heartbeat": "2023-01-02T03:04:09.500000",
        "result": 7,
        "stop_time": "2023-01-02T03:04:10.000001",
    }
    metrics = {
        "acc": {"steps": [0, 1], "values": [0.5, 0.75], "timestamps": ["2023-01-02T03:04:06"] * 2}
    }
    files = {
        "runs/1/run.json": json.dumps(run, indent=2),
        "runs/1/config.json": json.dumps({"C": 2}),
        "runs/1/cout.txt": "hello\n",
        "runs/1/metrics.json": json.dumps(metrics),
        "runs/1/model.bin": "weights",
        "runs/_sources/exp_0123456789abcdef0123456789abcdef.py": "print('old')\n",
        "runs/_resources/x_0123456789abcdef0123456789abcdef.csv": "a,b\n",
    }
    for key, text in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=text.encode())

    reader = open_reader(get_plugin_manager(), s3_url)
    [summary] = reader.list_runs()
    assert (summary.id, summary.experiment, summary.status, summary.result) == (
        1,
        "old",
        "COMPLETED",
        7,
    )
    record = reader.get_run(1)
    assert record.start_time == datetime.datetime(2023, 1, 2, 3, 4, 5)
    assert (record.config, record.captured_out) == ({"C": 2}, "hello\n")
    assert record.metrics["acc"]["values"] == [0.5, 0.75]
    assert reader.read_resource(1, "/data/x.csv") == b"a,b\n"
    assert reader.read_source("1", "exp.py") == b"print('old')\n"
    assert reader.read_artifact(1, "model.bin") == b"weights"


def test_files_sacreds_observer_put_under_the_run_folder_are_read_and_synced(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Sacred 0.8.7's S3Observer (`python exp.py -S s3://bkt/runs`, and `-q` for run 2)
    # uploads a started run's sources and resources to <prefix>/<id>/<the key it records>,
    # and copies a queued run's sources into the run's folder by base name.
    bucket, _ = object_key(s3_url, "")
    client = client_for(s3_url)
    client.create_bucket(Bucket=bucket)
    code, data = b"print('sacred')\n", b"x,y\n1,2\n"
    source = f"_sources/exp_{_md5(code)}.py"
    resource = f"runs/_resources/data_{_md5(data)}.csv"
    experiment = {"name": "sac", "base_dir": "/home/me/proj", "mainfile": "exp.py"}
    started = {
        "artifacts": [],
        "command": "main",
        "experiment": {**experiment, "sources": [["exp.py", source]]},
        "heartbeat": "2026-12-03T20:28:58.123456",
        "host": {"hostname": "vm"},
        "meta": {"command": "main"},
        "resources": [["/home/me/proj/data.csv", resource]],
        "result": 3,
        "start_time": "2026-12-03T20:28:58.100000",
        "status": "COMPLETED",
        "stop_time": "2026-12-03T20:28:58.130000",
    }
    queued = {
        "command": "main",
        "experiment": {**experiment, "sources": [{"py/tuple": ["exp.py", _md5(code)]}]},
        "host": {"hostname": "vm"},
        "meta": {"command": "main"},
        "status": "QUEUED",
    }
    objects = {
        "runs/1/run.json": json.dumps(started, sort_keys=True, indent=2).encode(),
        "runs/1/config.json": b"{}",
        "runs/1/cout.txt": b"",
        f"runs/1/runs/{source}": code,
        f"runs/1/{resource}": data,
        "runs/2/run.json": json.dumps(queued, sort_keys=True, indent=2).encode(),
        "runs/2/config.json": b"{}",
        "runs/2/exp.py": code,
    }
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)

    reader = open_reader(get_plugin_manager(), s3_url)
    assert reader.read_source(1, "exp.py") == code
    assert reader.read_resource(1, "/home/me/proj/data.csv") == data
    assert reader.read_source(2, "exp.py") == code
    monkeypatch.chdir(tmp_path)
    back = tmp_path / "back"
    assert expkit.main(["sync", s3_url, str(back)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 copied, 0 already in {back}"
    copy = FileStoreReader(back)
    assert copy.read_source("1", "exp.py") == code == copy.read_source("2", "exp.py")
    assert copy.read_resource("1", "/home/me/proj/data.csv") == data


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_go_out_in_small_segments_and_metrics_json_is_complete_at_the_end(s3_url: str):
    obs = open_store(get_plugin_manager(), s3_url)
    run_id = _start(obs)
    for batch in range(10):
        obs.log_metric_columns(_columns(batch * 600, 600), {})
    objects = _keys(s3_url)
    segments = {k: v for k, v in objects.items() if k.startswith(f"{run_id}/_metrics/")}
    # No write sends more than a segment: one batch over the limit at most.
    assert len(segments) >= 3
    assert max(len(v) for v in segments.values()) < SEGMENT_BYTES + 40_000
    reader = open_reader(get_plugin_manager(), s3_url)
    assert reader.get_run(run_id).metrics["loss"]["steps"] == list(range(6000))
    # For Sacred's readers metrics.json is behind by half at most while the run runs.
    behind = json.loads(objects[f"{run_id}/metrics.json"])["loss"]["steps"]
    assert 3000 <= len(behind) <= 6000 and behind == list(range(len(behind)))

    obs.completed_event(stop_time=T2, result=None)
    objects = _keys(s3_url)
    assert not [k for k in objects if "/_metrics/" in k]
    loss = json.loads(objects[f"{run_id}/metrics.json"])["loss"]
    assert (loss["steps"], loss["values"]) == (list(range(6000)), [s / 7 for s in range(6000)])
    assert reader.get_run(run_id).metrics["loss"]["steps"] == list(range(6000))


def test_a_resumed_run_keeps_every_batch_once(s3_url: str) -> None:
    pm = get_plugin_manager()
    first = open_store(pm, s3_url)
    run_id = _start(first)
    first.log_metric_columns(_columns(0, 2000), {})  # more than a segment holds
    first.log_metric_columns(_columns(2000, 3), {})
    # The store took the second batch but the answer was lost: the spool replays it.
    again = open_store(pm, s3_url)
    again.resume(run_id)
    again.log_metric_columns(_columns(2000, 3), {})
    again.log_metric_columns(_columns(2003, 3), {})
    again.completed_event(stop_time=T2, result=1)
    reader = open_reader(pm, s3_url)
    assert reader.get_run(run_id).metrics["loss"]["steps"] == list(range(2006))
    # Points delivered after the end (a spooled batch, late) join metrics.json's, and a
    # reader sees all of them before the end is written again.
    late = open_store(pm, s3_url)
    late.resume(run_id)
    late.log_metric_columns(_columns(2006, 2), {})
    assert reader.get_run(run_id).metrics["loss"]["steps"] == list(range(2008))
    late.completed_event(stop_time=T2, result=1)
    assert reader.get_run(run_id).metrics["loss"]["steps"] == list(range(2008))
    objects = _keys(s3_url)
    assert not [k for k in objects if "/_metrics/" in k]
    assert json.loads(objects[f"{run_id}/metrics.json"])["loss"]["steps"] == list(range(2008))


@pytest.mark.parametrize("up", [True, False])
def test_ping_answers_at_once(s3_server: MotoS3, s3_url: str, up: bool) -> None:
    storage = S3Storage.from_url(s3_url)
    storage.client.create_bucket(Bucket=storage.bucket)
    if not up:
        s3_server.stop()
    started = time.monotonic()
    assert storage.ping() is up
    assert time.monotonic() - started < 3


# --- ids -------------------------------------------------------------------------------------


def test_an_id_taken_after_the_listing_is_passed_over(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs = open_store(get_plugin_manager(), s3_url)
    assert [_start(obs, {"n": n}) for n in range(3)] == [1, 2, 3]
    # Another process claimed 1 to 3 between this process's listing and its write.
    monkeypatch.setattr(obs.storage, "_max_id", lambda: 0)
    assert _start(obs, {"n": 3}) == 4
    listed = open_reader(get_plugin_manager(), s3_url).list_runs()
    assert [(r.id, r.config["n"]) for r in listed] == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_runs_may_fill_a_bucket_from_its_top(s3_server: MotoS3, s3_env: None) -> None:
    url = f"s3://expkit-test-{uuid.uuid4().hex[:12]}?endpoint_url={s3_server.endpoint}"
    obs = open_store(get_plugin_manager(), url)
    assert [_start(obs, {"n": n}) for n in range(2)] == [1, 2]
    obs.completed_event(stop_time=T2, result=None)
    assert sorted(k for k in stored_objects(url) if k.endswith("run.json")) == [
        "1/run.json",
        "2/run.json",
    ]
    listed = open_reader(get_plugin_manager(), url).list_runs()
    assert [(r.id, r.status) for r in listed] == [(1, "RUNNING"), (2, "COMPLETED")]


# --- URLs, endpoints and credentials ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://Bad_Bucket/runs", "bucket name 'Bad_Bucket' does not follow AWS's rules"),
        ("s3:///runs", "names no bucket: write s3://BUCKET/PREFIX"),
        (
            "s3://my-bucket/runs?endpoint=http://x",
            "unknown option 'endpoint' (known: endpoint_url, region)",
        ),
        ("s3://my-bucket/../runs", "may not hold '.' or '..' parts"),
        ("s3://KEYID:s3cr3t-value@my-bucket/runs", "S3 credentials go in AWS_ACCESS_KEY_ID"),
    ],
)
def test_a_wrong_url_is_one_line_and_a_usage_error(
    s3_env: None, url: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    assert expkit.main(["runs", "list", "--store", url]) == 4
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert "s3cr3t-value" not in err


def test_a_bucket_that_does_not_exist_is_said_so(s3_url: str, capsys: pytest.CaptureFixture):
    assert expkit.main(["runs", "list", "--store", s3_url]) == 4
    bucket, _ = object_key(s3_url, "")
    assert f"no S3 store at s3://{bucket}/runs?endpoint_url=" in capsys.readouterr().err


def test_the_script_flag_takes_s3_urls_only(project: Path) -> None:
    done = run_script("exp_s3.py", "--s3", "runs", cwd=project)
    assert done.returncode == 1
    assert "-S/--s3 takes s3://BUCKET/PATH, not 'runs'" in done.stderr


def test_without_boto3_it_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['boto3'] = sys.modules['botocore'] = None  # as if the extra were missing\n"
        "import expkit\n"
        "sys.exit(expkit.main(['runs', 'list', '--store', 's3://lab-runs/iris']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 4
    assert done.stderr.strip() == "ERROR: the S3 store needs boto3: pip install 'expkit[s3]'"


def test_other_stores_never_import_boto3(tmp_path: Path) -> None:
    code = (
        "import sys, expkit\n"
        "expkit.main(['runs', 'list', '--store', sys.argv[1]])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))\n"
    )
    (tmp_path / "runs").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr


def test_google_cloud_storage_is_reached_through_the_endpoint(
    s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gcs = "https://storage.googleapis.com"
    assert f"?endpoint_url={gcs}'" in INSTEAD and f"AWS_ENDPOINT_URL={gcs}" in INSTEAD
    from_url = S3Storage.from_url(f"s3://my-bucket/runs?endpoint_url={gcs}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", gcs)
    observer = S3Observer("my-bucket", "runs")
    for client in (from_url.client, observer.storage.client):
        assert client.meta.endpoint_url == gcs
        # GCS refuses the checksum trailers boto3 sends AWS: only the required ones go.
        assert client.meta.config.request_checksum_calculation == "when_required"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    aws = S3Storage.from_url("s3://my-bucket/runs?region=eu-west-1").client
    assert aws.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


@pytest.mark.slow
def test_credentials_are_never_printed_or_stored(s3_url: str, project: Path) -> None:
    outputs = []
    done = run_expkit("run", "exp_s3.py", "--store", s3_url, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs += [done.stdout, done.stderr]
    for command in (["runs", "list"], ["runs", "show", "1"], ["runs", "export"]):
        shown = run_expkit(*command, "--store", s3_url, cwd=project)
        assert shown.returncode == 0, shown.stderr
        outputs += [shown.stdout, shown.stderr]
    assert "training with 0.5" in outputs[4]  # runs show 1 shows the stored run
    # At -l DEBUG botocore would log every request with its signed headers.
    debug = run_script("exp_s3.py", "-l", "DEBUG", "-S", s3_url, cwd=project)
    assert debug.returncode == 0, debug.stderr
    outputs += [debug.stdout, debug.stderr]
    stored = b"".join(stored_objects(s3_url).values()).decode("latin-1")
    assert "training with 0.5" in stored
    for secret in (SECRET, KEY_ID):
        assert secret not in stored
        assert_not_printed(secret, *outputs)


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_server_gone_mid_run_leaves_the_run_spooled_until_sync_delivers_it(
    s3_server: MotoS3, s3_url: str, project: Path, spool: Path
) -> None:
    go = project / "go"
    proc = start_expkit(
        "run", "exp_s3.py", "-o", f"wait_for={go}", "--store", s3_url, cwd=project, until="waiting"
    )
    s3_server.stop()
    go.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err  # the run completed without its store
    assert "COMPLETED" in out
    spooled = [line for line in out.splitlines() if line.startswith("spooled 1 run(s) for s3://")]
    assert len(spooled) == 1 and "deliver with: expkit sync" in spooled[0], out
    assert_not_printed(SECRET, out, err)

    s3_server.start()  # back, and empty: moto keeps nothing
    synced = run_expkit("sync", str(spool), s3_url, cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.splitlines()[-1] == "1 delivered, 0 still spooled"
    reader = open_reader(get_plugin_manager(), s3_url)
    [summary] = reader.list_runs()
    record = reader.get_run(summary.id)
    assert (record.status, record.result, record.info) == ("COMPLETED", 1.0, {"best": 0.5})
    assert record.metrics["loss"]["steps"] == [0, 1, 2, 3, 4]
    assert "training with 0.5\nwaiting\n" in record.captured_out
    assert reader.read_artifact(summary.id, "model.txt") == b"weights 0.5\n"
    assert reader.read_resource(summary.id, str(project / "data.csv")) == b"x\n1\n"


# --- the commands on S3 ----------------------------------------------------------------------


@pytest.mark.slow
def test_rerun_sync_and_ui_work_on_s3(s3_url: str, project: Path, tmp_path: Path) -> None:
    from ui_helpers import UiServer

    # A re-run runs in a folder of its own: the resource is given by its full path.
    data = f"data={project / 'data.csv'}"
    done = run_expkit("run", "exp_s3.py", "-o", data, "--store", s3_url, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    rerun = run_expkit("rerun", "1", "--check", "--store", s3_url, cwd=project)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "result: identical (1.0)" in rerun.stdout.splitlines()
    reader = open_reader(get_plugin_manager(), s3_url)
    assert [r.id for r in reader.list_runs()] == [1, 2]
    assert reader.get_run(2).meta["rerun_of"]["id"] in (1, "1")

    copy = tmp_path / "copy"
    synced = run_expkit("sync", s3_url, str(copy), cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert [r.status for r in FileStoreReader(copy).list_runs()] == ["COMPLETED"] * 2
    back = run_expkit("sync", str(copy), s3_url, cwd=project)
    assert back.stdout.count("(already there)") == 2, back.stdout

    with UiServer("--store", s3_url, cwd=project) as ui:
        rows = ui.get_json("/api/runs?group=0")["rows"]
        assert sorted(r["id"] for r in rows) == [1, 2]
        run = ui.get_json("/api/runs/1")
        assert (run["status"], run["result"]) == ("COMPLETED", 1.0)
        assert run["artifacts"] == [{"name": "model.txt", "kind": "text"}]
