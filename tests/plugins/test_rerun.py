"""``expkit rerun ID``: real experiments, real processes, a real file store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import child_env, run_expkit, run_script, stored_runs, write_project

pytestmark = pytest.mark.slow

EXPERIMENT = """\
    import expkit
    import numpy as np

    @expkit.config
    def cfg():
        C = 1.0
        n = 5

    def exp_noise(C, n, _seed, _run):
        rng = np.random.default_rng(_seed)
        for step in range(3):
            _run.log_scalar("loss", float(rng.random()) * C, step)
        return float(rng.random(n).sum() * C)
"""

SCRIPT = """\
    from expkit import Experiment
    import numpy as np

    ex = Experiment("scripty")

    @ex.config
    def cfg():
        scale = 2
        opts = {"depth": 3}

    @ex.automain
    def main(scale, opts, _seed):
        return float(np.random.default_rng(_seed).random() * scale * opts["depth"])
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "proj", {"exp_noise.py": EXPERIMENT, "script.py": SCRIPT})
    done = run_expkit("run", "exp_noise.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_a_numpy_experiment_is_reproduced_exactly(project: Path) -> None:
    done = run_expkit("rerun", "1", "--check", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = stored_runs(project / "runs")
    assert rerun["result"] == original["result"]
    assert rerun["meta"]["rerun_of"] == {"store": str(project / "runs"), "id": "1"}
    assert "derived_from" not in rerun["meta"]
    assert rerun["config"] == original["config"]
    lines = done.stdout.splitlines()
    assert f"result: identical ({original['result']})" in lines
    assert "metrics: identical (1)" in lines
    assert f"sources: the working copy in {project} is as recorded" in lines


def test_a_changed_source_is_reported_line_by_line(project: Path) -> None:
    path = project / "exp_noise.py"
    path.write_text(path.read_text().replace("C = 1.0", "C = 4.0"))
    done = run_expkit("rerun", "1", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # The re-run ran the stored code, so it still reproduces the result.
    assert any(line.startswith("result: identical") for line in lines)
    assert f"source exp_noise.py: changed since run 1 (working copy {path})" in lines
    assert "  -    C = 1.0" in lines and "  +    C = 4.0" in lines


def test_an_override_records_the_link_and_check_fails_on_a_new_result(project: Path) -> None:
    done = run_expkit("rerun", "1", "-o", "C=2.0", "--check", cwd=project)
    assert done.returncode == 1, done.stdout + done.stderr
    original, rerun = stored_runs(project / "runs")
    link = {"store": str(project / "runs"), "id": "1"}
    assert rerun["meta"]["rerun_of"] == link
    assert rerun["meta"]["derived_from"] == {**link, "overrides": {"C": 2.0}}
    assert rerun["config"] == {**original["config"], "C": 2.0}
    assert rerun["result"] == pytest.approx(2 * original["result"])
    assert any(line.startswith("result: differs:") for line in done.stdout.splitlines())
    assert any("metric loss: first differs at step 0" in line for line in done.stdout.splitlines())


def test_a_script_experiment_reruns_with_its_nested_config(project: Path) -> None:
    first = subprocess.run(
        [sys.executable, "script.py", "-F", "runs"],
        cwd=project,
        env=child_env(),
        capture_output=True,
    )
    assert first.returncode == 0, first.stderr
    done = run_expkit("rerun", "2", "-o", "opts.depth=1", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    rerun = stored_runs(project / "runs")[-1]
    assert rerun["config"]["opts"] == {"depth": 1}
    assert json.dumps(rerun["meta"]["derived_from"]["overrides"]) == '{"opts.depth": 1}'


def test_an_override_of_no_config_entry_is_a_usage_error(project: Path) -> None:
    done = run_expkit("rerun", "1", "-o", "Cx=2", cwd=project)
    assert done.returncode == 4
    assert done.stderr == "ERROR: -o Cx: run 1 has no config entry 'Cx' (did you mean 'C'?)\n"


DERIVED = """\
    import expkit

    @expkit.config
    def cfg():
        n = 3
        derived = n * 2

    @expkit.named_config
    def big():
        n = 10

    def exp_derived(n, derived):
        return derived
"""


def test_an_entry_computed_from_an_overridden_one_follows_it(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", {"exp_derived.py": DERIVED})
    done = run_expkit("run", "exp_derived.py", "-w", "big", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_expkit("rerun", "1", "-o", "n=5", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = stored_runs(root / "runs")
    assert (original["config"]["derived"], rerun["config"]["derived"]) == (20, 10)
    assert rerun["config"] == {**original["config"], "n": 5, "derived": 10}
    assert rerun["meta"]["named_configs"] == ["big"]


NAMED_FILE = {
    "proj/exp_scaled.py": """\
        from expkit import Experiment

        ex = Experiment("scaled")

        @ex.config
        def cfg():
            C = 1.0
            depth = 2
            total = C * depth

        @ex.automain
        def main(total):
            return total
    """,
    "proj/variants/deep.yaml": "depth: 5\n",
}


@pytest.mark.parametrize("where", ["proj", "."], ids=["from-its-folder", "from-above"])
def test_a_config_file_given_as_a_named_config_is_stored_and_rerun(
    tmp_path: Path, where: str
) -> None:
    write_project(tmp_path, NAMED_FILE)
    cwd = tmp_path / where
    script = os.path.relpath(tmp_path / "proj" / "exp_scaled.py", cwd)
    variant = os.path.relpath(tmp_path / "proj" / "variants" / "deep.yaml", cwd)
    done = run_script(script, "with", variant, "-F", "runs", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    [original] = stored_runs(cwd / "runs")
    assert "variants/deep.yaml" in [name for name, _ in original["experiment"]["sources"]]
    (tmp_path / "proj" / "variants" / "deep.yaml").unlink()  # only the stored copy is left
    done = run_expkit("rerun", "1", "-o", "C=3.0", "--store", "runs", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    _, rerun = stored_runs(cwd / "runs")
    assert (rerun["config"]["depth"], rerun["result"]) == (5, 15.0)  # the file's depth, C=3


BASE_ABOVE = {
    "src/exp_based.py": """\
        import os

        from expkit import Experiment
        from helpers import scale

        ex = Experiment("based", base_dir=os.path.dirname(os.path.dirname(__file__)))

        @ex.automain
        def main(_seed):
            return scale * (_seed % 7)
    """,
    "src/helpers.py": "scale = 3\n",
}


def test_a_script_whose_base_dir_is_above_it_records_its_path_and_reruns(tmp_path: Path) -> None:
    write_project(tmp_path, BASE_ABOVE)
    done = run_script("src/exp_based.py", "-F", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    [original] = stored_runs(tmp_path / "runs")
    assert original["experiment"]["mainfile"] == "src/exp_based.py"  # as Sacred records it
    done = run_expkit("rerun", "1", "--check", "--store", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"result: identical ({original['result']})" in done.stdout.splitlines()


SEEDED = """\
    import expkit

    @expkit.config
    def cfg():
        a = 2

    def exp_seeded(a, _seed):
        return a * (_seed % 5)
"""


def test_a_run_whose_config_holds_a_name_expkit_fills_in_is_rerun_without_it(
    tmp_path: Path,
) -> None:
    # As `-o _seed=3 -f` stored it before such updates were refused: the function got its
    # own _seed all the same.
    root = write_project(tmp_path / "proj", {"exp_seeded.py": SEEDED})
    assert run_expkit("run", "exp_seeded.py", cwd=root).returncode == 0
    config_file = root / "runs" / "1" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_seed": 3}))
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "left out of the re-run's config: _seed (names expkit fills in)" in lines
    assert any(line.startswith("result: identical (") for line in lines)


PLAIN_MAIN = """\
    from expkit import Experiment

    ex = Experiment("plain")

    @ex.config
    def cfg():
        lr = 0.1
        steps = 3

    @ex.main
    def main(lr, steps, _rnd):
        return lr * steps + float(_rnd.random())
"""


def test_an_experiment_object_without_automain_is_rerun(tmp_path: Path) -> None:
    # Collected by `expkit run`, and run from Python: neither needs the file to run
    # its own command line, and neither may the rerun.
    root = write_project(tmp_path / "proj", {"exp_plain.py": PLAIN_MAIN})
    done = run_expkit("run", "exp_plain.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    from_python = subprocess.run(
        [
            sys.executable,
            "-c",
            "from exp_plain import ex\n"
            "from expkit.observers import FileStorageObserver\n"
            "ex.observers.append(FileStorageObserver('runs'))\n"
            "ex.run(config_updates={'lr': 0.5})\n",
        ],
        cwd=root,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert from_python.returncode == 0, from_python.stderr
    for run_id in ("1", "2"):
        done = run_expkit("rerun", run_id, "--check", cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
    first, second, rerun_1, rerun_2 = stored_runs(root / "runs")
    assert (rerun_1["result"], rerun_2["result"]) == (first["result"], second["result"])
    assert rerun_2["config"]["lr"] == 0.5
    assert rerun_1["experiment"]["name"] == rerun_2["experiment"]["name"] == "plain"


def test_a_command_other_than_main_run_from_python_is_not_rerun_as_main(tmp_path: Path) -> None:
    experiment = """\
        from expkit import Experiment

        ex = Experiment("cmd")

        @ex.command
        def evaluate():
            return 20

        @ex.main
        def main():
            return 2
    """
    root = write_project(tmp_path / "proj", {"exp_cmd.py": experiment})
    script = (
        "from exp_cmd import ex\nfrom expkit.observers import FileStorageObserver\n"
        "ex.observers.append(FileStorageObserver('runs'))\nex.run('evaluate')\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=child_env(), capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == (
        "the re-run ran the command 'main', not the run's 'evaluate': run it again from "
        "Python, ex.run('evaluate', config_updates=...); nothing was recorded"
    )
    assert len(stored_runs(root / "runs")) == 1


RESOURCE = """\
    def exp_count(_run):
        with _run.open_resource("data/n.txt") as f:
            return int(f.read())
"""


def test_an_input_file_the_run_read_is_put_back_for_the_rerun(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", {"exp_count.py": RESOURCE, "data/n.txt": "5\n"})
    done = run_expkit("run", "exp_count.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    (root / "data" / "n.txt").write_text("6\n")  # the working copy moved on; the run did not
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: identical (5)" in done.stdout.splitlines()
    shown = run_expkit("runs", "show", "1", cwd=root).stdout.splitlines()
    digest = hashlib.md5(b"5\n").hexdigest()
    resources = shown.index("resources:")
    assert shown[resources + 1] == f"  {root / 'data' / 'n.txt'}  md5 {digest}"


LAZY_IMPORT = {
    "exp_lazy.py": """\
        def exp_lazy(n=3):
            from helpers.maths import triple  # imported only once the run has started

            return triple(n)
    """,
    "helpers/__init__.py": "",
    "helpers/maths.py": """\
        def triple(n):
            return 3 * n
    """,
}


def test_a_module_imported_inside_the_experiment_is_stored_and_rerun(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", LAZY_IMPORT)
    done = run_expkit("run", "exp_lazy.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    [original] = stored_runs(root / "runs")
    names = [name for name, _ in original["experiment"]["sources"]]
    assert names == ["exp_lazy.py", "helpers/__init__.py", "helpers/maths.py"]
    (root / "helpers" / "maths.py").unlink()  # the rerun has only what the run stored
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: identical (9)" in done.stdout.splitlines()


EXPCONF_ABOVE = {
    "expconf.py": """\
        import expkit

        @expkit.config
        def cfg():
            scale = 2.0

        @expkit.fixture
        def offset(_rnd):
            return float(_rnd.random())
    """,
    "studies/exp_scaled.py": """\
        def exp_scaled(scale, offset):
            return scale + offset
    """,
}


def test_an_expconf_above_the_experiment_is_stored_and_rerun(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", EXPCONF_ABOVE)
    done = run_expkit("run", "studies/exp_scaled.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    [original] = stored_runs(root / "runs")
    names = [name for name, _ in original["experiment"]["sources"]]
    assert names == ["expconf.py", "studies/exp_scaled.py"]
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"result: identical ({original['result']})" in done.stdout.splitlines()


NOT_FINITE = """\
    import expkit

    @expkit.config
    def cfg():
        high = float("inf")
        pair = [float("nan"), 1.0]

    def exp_bounds(high, pair):
        return [type(high).__name__, str(high), str(pair[0])]
"""


def test_an_inf_a_config_scope_computed_is_rerun_as_inf_not_as_text(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", {"exp_bounds.py": NOT_FINITE})
    done = run_expkit("run", "exp_bounds.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'result: identical (["float", "inf", "nan"])' in done.stdout.splitlines()


def test_a_fixture_imported_from_a_package_elsewhere_leaves_the_base_dir(tmp_path: Path) -> None:
    # Only expconf.py files widen it: else the sources would be looked for from "/" down.
    lib = tmp_path / "lib" / "mylib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(
        "import expkit\n\n@expkit.fixture\ndef offset():\n    return 1\n"
    )
    experiment = f"""\
        import sys
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        from mylib import offset

        def exp_x(offset):
            return offset
    """
    root = write_project(tmp_path / "proj", {"exp_x.py": experiment})
    done = run_expkit("run", "exp_x.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = stored_runs(root / "runs")
    assert run["experiment"]["base_dir"] == str(root)
    assert [name for name, _ in run["experiment"]["sources"]] == ["exp_x.py"]


CONFIG_FILES = {
    "params.yaml": "lr: 0.5\n",
    "fast.json": '{"lr": 0.25}\n',
    "exp_files.py": """\
        from expkit import Experiment

        ex = Experiment("files")
        ex.add_config("params.yaml")
        ex.add_named_config("fast", "fast.json")

        @ex.automain
        def main(lr):
            return lr * 2
    """,
}


def test_config_files_the_experiment_adds_are_stored_and_rerun(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", CONFIG_FILES)
    first = subprocess.run(
        [sys.executable, "exp_files.py", "-F", "runs"], cwd=root, env=child_env(), text=True,
        capture_output=True,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    [original] = stored_runs(root / "runs")
    names = [name for name, _ in original["experiment"]["sources"]]
    assert names == ["exp_files.py", "fast.json", "params.yaml"]
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: identical (1.0)" in done.stdout.splitlines()


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=folder, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_git_drift_is_said_in_words(tmp_path: Path) -> None:
    from expkit.records import RunRecord
    from expkit_plugins.rerun import report_lines

    (tmp_path / "exp.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "exp.py")
    _git(tmp_path, "commit", "-qm", "first")
    commit = _git(tmp_path, "rev-parse", "HEAD")

    def git_line(repositories: list) -> str:
        info = {"base_dir": str(tmp_path), "repositories": repositories}
        record = RunRecord(1, "s", "e", "COMPLETED", experiment_info=info)
        lines = report_lines(record, record, 2, {})
        return next(line for line in lines if line.startswith("git:"))

    then = [{"url": str(tmp_path), "commit": commit, "dirty": False}]
    assert git_line(then) == f"git: same (commit {commit})"
    (tmp_path / "exp.py").write_text("x = 2\n")
    assert git_line(then) == (
        f"git: commit {commit} then, commit {commit} with uncommitted changes now"
    )
    assert git_line([]) == f"git: no repository then, commit {commit} with uncommitted changes now"


TUPLES = """\
    import expkit

    @expkit.config
    def cfg():
        shape = (2, 3)
        padded = shape + (1,)
        opts = {"kernel": (3, 3)}

    def exp_shapes(shape, padded, opts):
        return [type(shape).__name__, type(padded).__name__, type(opts["kernel"]).__name__]
"""


def test_a_rerun_keeps_tuples_and_the_experiment_name(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", {"studies/exp_shapes.py": TUPLES})
    done = run_expkit("run", "studies/exp_shapes.py", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_expkit("rerun", "1", "--check", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    original, rerun = stored_runs(root / "runs")
    assert original["result"] == rerun["result"] == ["tuple", "tuple", "tuple"]
    assert rerun["experiment"]["name"] == "studies/exp_shapes.py::exp_shapes"
    assert rerun["config"] == original["config"]


def _tamper(stored: Path) -> None:
    text = stored.read_text()
    stored.write_text(text.replace("rng.random(n).sum()", "(rng.random(n).sum() + 1)"))


@pytest.mark.parametrize("kind", ["file", "tinydb"])
def test_a_tampered_stored_source_is_refused_unless_forced(tmp_path: Path, kind: str) -> None:
    root = write_project(tmp_path / "proj", {"exp_noise.py": EXPERIMENT})
    url = str(root / "runs") if kind == "file" else f"tinydb://{root / 'db'}"
    done = run_expkit("run", "exp_noise.py", "--store", url, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = re.search(r" id=(\S+)", done.stdout).group(1)
    digest = hashlib.md5((root / "exp_noise.py").read_bytes()).hexdigest()
    if kind == "file":
        copy = f"_sources/exp_noise_{digest}.py"
        store = root / "runs"
    else:
        copy = f"hashfs/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest[6:]}"
        store = root / "db"
    _tamper(store / copy)
    tampered = hashlib.md5((store / copy).read_bytes()).hexdigest()

    refused = run_expkit("rerun", run_id, "--store", url, cwd=root)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert refused.stderr == (
        f"ERROR: run {run_id}: source 'exp_noise.py' as stored in {url} has md5 {tampered}, "
        f"not the {digest} the run recorded: the stored copy was changed after the run; "
        "re-run it anyway with --force\n"
    )
    assert "re-running" not in refused.stdout
    listed = run_expkit("runs", "list", "--store", url, cwd=root)
    assert "1 run of exp_noise.py::exp_noise in " in listed.stdout, listed.stdout

    forced = run_expkit("rerun", run_id, "--force", "--store", url, cwd=root)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    lines = forced.stdout.splitlines()
    assert any(line.startswith("result: differs:") for line in lines)
    assert (
        f"source exp_noise.py: the stored copy has md5 {tampered}, not the recorded {digest}; "
        "the re-run ran it (--force)" in lines
    )
    # The working copy is still the file the run recorded: the report does not blame it.
    assert f"sources: the working copy in {root} is as recorded" in lines
