"""A store distributed as its own package (tests/third_party_store: ``expkit_memstore`` and its
dist-info) is found through the ``expkit`` entry-point group, with nothing to configure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import run_expkit, run_script

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "third_party_store"

EXPERIMENT = """
from expkit import Experiment

ex = Experiment("mem")


@ex.config
def cfg():
    n = 2


@ex.main
def main(n, _run):
    print("n is", n)
    _run.log_scalar("loss", 0.5)
    _run.log_scalar("loss", 0.25)
    return n * 3
"""

MODULE_EXPERIMENT = """
import expkit


@expkit.config
def cfg():
    n = 2


def exp_mem(n, _rnd):
    return n * 3 + int(_rnd.integers(100))
"""

SCRIPT = (
    EXPERIMENT.replace("from expkit import Experiment", "import os\nfrom expkit import Experiment")
    + """
from expkit.observers import MemStoreObserver

ex.observers.append(MemStoreObserver(os.environ["MEMSTORE_FILE"]))

if __name__ == "__main__":
    ex.run_commandline()
"""
)


@pytest.fixture
def env() -> dict[str, str]:
    """The package is installed the simplest way: its folder is on the path."""
    environ = {k: v for k, v in os.environ.items() if k not in ("EXPKIT_PLUGINS",)}
    environ.pop("EXPKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return environ


@pytest.fixture
def exp_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp_mem.py"
    path.write_text(EXPERIMENT)
    return path


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_one_complete_run(path: Path) -> None:
    found = events(path)
    kinds = [e["event"] for e in found]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert len({e["run_id"] for e in found}) == 1
    assert found[0]["name"] == "mem" and found[0]["config"]["n"] == 2
    assert found[-1]["result"] == 6
    points = [p for e in found if e["event"] == "metrics" for p in e["points"]["loss"]]
    assert points == [[0, 0.5], [1, 0.25]]
    assert "n is 2" in [e for e in found if e["event"] == "heartbeat"][-1]["captured_out"]


def test_the_plugin_is_listed_as_an_entry_point(tmp_path: Path, env: dict[str, str]) -> None:
    done = run_expkit("plugins", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "memstore" in line]
    assert "entrypoint" in line and "expkit-memstore 1.0" in line and "expkit_memstore" in line


def test_expkit_run_stores_into_the_plugins_url(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    target = tmp_path / "events.jsonl"
    done = run_expkit(
        "run", exp_file.name, "--store", f"memstore://{target}", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "COMPLETED" in done.stdout
    assert_one_complete_run(target)
    assert not (tmp_path / "runs").exists()  # the default store was not used


def test_the_scripts_own_command_line_finds_the_plugin_too(
    tmp_path: Path, env: dict[str, str]
) -> None:
    script = tmp_path / "exp_script.py"
    script.write_text(SCRIPT)
    target = tmp_path / "events.jsonl"
    done = run_script(
        script, "with", "n=2", cwd=tmp_path, env={**env, "MEMSTORE_FILE": str(target)}
    )
    assert done.returncode == 0, done.stderr
    assert_one_complete_run(target)


def test_without_autoload_the_scheme_is_unknown(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    target = tmp_path / "events.jsonl"
    env["EXPKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = run_expkit(
        "run", exp_file.name, "--store", f"memstore://{target}", cwd=tmp_path, env=env
    )
    assert done.returncode == 4
    [line] = done.stderr.splitlines()
    assert line.startswith(f"ERROR: no store plugin handles 'memstore://{target}'")
    assert "known schemes: file://" in line and "tinydb://" in line and "mongodb://" in line
    assert "memstore" not in line.partition("known schemes")[2]
    assert not target.exists()
    assert not (tmp_path / "runs").exists()

    # Named with -p, it loads again even without autoload, as in pytest.
    done = run_expkit(
        "run",
        exp_file.name,
        "-p",
        "memstore",
        "--store",
        f"memstore://{target}",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_one_complete_run(target)


def test_blocking_the_plugin_by_name(tmp_path: Path, env: dict[str, str], exp_file: Path) -> None:
    target = tmp_path / "events.jsonl"
    done = run_expkit(
        "run",
        exp_file.name,
        "-p",
        "no:memstore",
        "--store",
        f"memstore://{target}",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 4
    assert "no store plugin handles" in done.stderr
    assert not target.exists()


def test_the_plugins_own_usage_error_is_one_line(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    done = run_expkit(
        "run", exp_file.name, "--store", "memstore://relative/events.jsonl", cwd=tmp_path, env=env
    )
    assert done.returncode == 4
    assert done.stderr == "ERROR: memstore needs an absolute path, got 'relative/events.jsonl'\n"


def test_a_third_party_store_that_fails_is_spooled_and_synced_like_any_other(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    target = tmp_path / "later" / "events.jsonl"  # its folder does not exist yet
    url = f"memstore://{target}"
    done = run_expkit("run", exp_file.name, "--store", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "store MemStoreObserver failed" in done.stderr
    assert str(tmp_path / "spool") in done.stderr

    target.parent.mkdir()
    synced = run_expkit("sync", str(tmp_path / "spool"), url, cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.endswith("1 delivered, 0 still spooled\n")
    assert_one_complete_run(target)


# --- a store on the store layer: written, and read back by every command --------------------


def test_a_store_backend_is_written_and_read_back_by_expkit_runs(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    url = f"jsonstore://{tmp_path / 'js'}"
    done = run_expkit("run", exp_file.name, "--store", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    [doc] = (tmp_path / "js").glob("*.json")
    run_id = doc.stem

    listed = run_expkit("runs", "list", "--store", url, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    # A uuid is listed by its first 8 characters, the one experiment in the last line.
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(run_id[:8] + " ")]
    assert row.split()[1] == "COMPLETED"
    assert listed.stdout.splitlines()[-1] == f"1 run of mem in {url}"
    # Its summaries are whole documents; a listing still leaves the options out, as the
    # built-in stores do, and the run shown whole has them.
    listed = run_expkit("runs", "list", "--json", "--store", url, cwd=tmp_path, env=env)
    [summary] = json.loads(listed.stdout)
    assert summary["meta"]["command"] == "main" and "options" not in summary["meta"]
    shown = run_expkit("runs", "show", run_id, "--json", "--store", url, cwd=tmp_path, env=env)
    whole = json.loads(shown.stdout)
    assert "--capture" in whole["meta"]["options"]

    shown = run_expkit("runs", "show", run_id, "--store", url, cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "result:     6" in shown.stdout
    assert "loss: 2 values, last 0.25" in shown.stdout
    assert "n is 2" in shown.stdout  # the captured output came back


def test_a_store_backend_is_rerun_and_synced_like_a_built_in_one(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    url = f"jsonstore://{tmp_path / 'js'}"
    module = tmp_path / "exp_module.py"
    module.write_text(MODULE_EXPERIMENT)
    assert run_expkit("run", module.name, "--store", url, cwd=tmp_path, env=env).returncode == 0
    [doc] = (tmp_path / "js").glob("*.json")

    rerun = run_expkit("rerun", doc.stem, "--check", "--store", url, cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "result: identical" in rerun.stdout
    assert len(list((tmp_path / "js").glob("*.json"))) == 2  # the re-run is stored there too

    synced = run_expkit("sync", url, str(tmp_path / "copy"), cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    copied = run_expkit("runs", "list", "--store", str(tmp_path / "copy"), cwd=tmp_path, env=env)
    assert copied.stdout.count("COMPLETED") == 2


def test_the_known_schemes_include_a_store_backends(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    done = run_expkit("run", exp_file.name, "--store", "nowhere://x", cwd=tmp_path, env=env)
    assert done.returncode == 4
    assert "jsonstore://" in done.stderr and "sqlite://" in done.stderr


def test_a_store_backend_is_shown_by_expkit_ui(
    tmp_path: Path, env: dict[str, str], exp_file: Path
) -> None:
    pytest.importorskip("starlette")
    from ui_helpers import UiServer

    url = f"jsonstore://{tmp_path / 'js'}"
    done = run_expkit("run", exp_file.name, "--store", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    [doc] = (tmp_path / "js").glob("*.json")
    with UiServer("--store", url, cwd=tmp_path, env=env) as server:
        [row] = server.get_json("/api/runs")["rows"]
        assert (row["id"], row["status"], row["result"]) == (doc.stem, "COMPLETED", 6)
        run = server.get_json(f"/api/runs/{doc.stem}")
        assert [m["name"] for m in run["metrics"]] == ["loss"]
        metrics = server.get_json(f"/api/runs/{doc.stem}/metrics?name=loss")
        assert metrics["metrics"]["loss"]["values"] == [0.5, 0.25]
