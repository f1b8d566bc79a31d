"""The paper's Listing 1 (SPEC 1.1) works as shown, with ``expkit`` in place of ``sacred``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import child_env, run_expkit, run_script, stored_runs

pytest.importorskip("sklearn")

IRIS = """\
from numpy.random import permutation
from sklearn import svm, datasets
from expkit import Experiment

ex = Experiment('iris_rbf_svm')

@ex.config
def cfg():
    C = 1.0      # regularisation strength
    gamma = 0.7

@ex.automain
def run(C, gamma):
    iris = datasets.load_iris()
    per = permutation(iris.target.size)
    iris.data, iris.target = iris.data[per], iris.target[per]
    clf = svm.SVC(C=C, kernel='rbf', gamma=gamma)
    clf.fit(iris.data[:90], iris.target[:90])
    return clf.score(iris.data[90:], iris.target[90:])
"""


REPO = Path(__file__).resolve().parents[1]


def recorded(store: Path) -> tuple[dict, dict]:
    """The run.json and config.json of the only run in a file store."""
    (run_dir,) = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith("_")]
    run_json = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return run_json, config


@pytest.fixture
def iris_dir(tmp_path: Path) -> Path:
    (tmp_path / "exp_iris.py").write_text(IRIS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def iris(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """exp_iris.py imported in this process, so that ``ex`` can be run from Python."""
    monkeypatch.chdir(iris_dir)
    spec = importlib.util.spec_from_file_location(f"exp_iris_{uuid.uuid4().hex}", "exp_iris.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_runs_with_the_defaults(iris_dir: Path) -> None:
    proc = run_script("exp_iris.py", "-F", "runs", cwd=iris_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Result: [01]\.\d+", proc.stderr), proc.stderr
    run_json, config = recorded(iris_dir / "runs")
    assert run_json["status"] == "COMPLETED"
    assert (config["C"], config["gamma"]) == (1.0, 0.7)
    assert isinstance(run_json["result"], float)
    assert 0.0 <= run_json["result"] <= 1.0


def test_script_with_updates_uses_them(iris_dir: Path) -> None:
    proc = run_script(
        "exp_iris.py", "with", "C=3.4e-2", "gamma=0.5", "-F", "runs", cwd=iris_dir, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    run_json, config = recorded(iris_dir / "runs")
    assert config["C"] == pytest.approx(0.034)
    assert config["gamma"] == 0.5
    assert run_json["meta"]["config_updates"] == {"C": 0.034, "gamma": 0.5}
    assert 0.0 <= run_json["result"] <= 1.0


def test_ex_run_with_config_updates(iris: ModuleType) -> None:
    run = iris.ex.run(config_updates={"C": 3.4e2, "gamma": 0.5})
    assert run.status == "COMPLETED"
    assert (run.config["C"], run.config["gamma"]) == (340.0, 0.5)
    assert isinstance(run.result, float)
    assert 0.0 <= run.result <= 1.0


def test_same_seed_same_score(iris: ModuleType) -> None:
    first = iris.ex.run(config_updates={"seed": 3, "gamma": 5.0})
    second = iris.ex.run(config_updates={"seed": 3, "gamma": 5.0})
    assert first.result == second.result


def test_run_command_print_config(iris: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    run = iris.ex.run_command("print_config", config_updates={"gamma": 7})
    assert run.status == "COMPLETED"
    assert run.result is None
    assert run.config["gamma"] == 7
    # 0.7 -> 7 is a new value: expkit marks it modified (Sacred marked it typechanged).
    assert run.config_modifications.modified == {"gamma"}
    assert run.config_modifications.typechanged == {}
    out = capsys.readouterr().out
    assert re.search(r"^  gamma = 7$", out, re.M), out
    assert re.search(r"^  C = 1\.0 +# regularisation strength$", out, re.M), out


@pytest.mark.parametrize(
    ("update", "colour"),
    [("gamma=0.5", "\x1b[34m"), ("gamma=7", "\x1b[34m"), ("gamma='wide'", "\x1b[31m")],
    ids=["modified-blue", "int-for-float-modified-blue", "typechanged-red"],
)
def test_print_config_marks_gamma_in_a_terminal(iris_dir: Path, update: str, colour: str) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "exp_iris.py", "print_config", "with", update],
        cwd=iris_dir,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], 60)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert f"{colour}{update.replace('=', ' = ')}\x1b[0m" in out
    assert "\x1b[32m" not in out.split("\n", 1)[1]  # nothing is marked added


@pytest.mark.slow
def test_the_readmes_run_is_reproduced_by_rerun_check(tmp_path: Path) -> None:
    # The README's command in the project's root; the re-run from another folder.
    store = tmp_path / "store"
    done = run_expkit(
        "run", "examples/exp_iris.py", "-o", "C=3", "--store", str(store), cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    again = run_expkit("rerun", "1", "--check", "--store", str(store), cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    original, rerun = stored_runs(store)
    assert rerun["result"] == original["result"]
    assert f"result: identical ({original['result']})" in again.stdout.splitlines()
    name = "examples/exp_iris.py::exp_rbf_svm"
    assert original["experiment"]["name"] == rerun["experiment"]["name"] == name
    listed = run_expkit("runs", "list", "--experiment", name, "--store", str(store), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[-1] == f"2 runs of {name} in {store}"  # one experiment: named below the table
    assert sorted(line.split()[0] for line in lines[1:-1]) == ["1", "2"]
