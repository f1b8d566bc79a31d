"""``pytest --expkit-smoke``: a project's test suite runs each experiment once, unobserved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import child_env, write_project

PROJECT = {
    "exp_models.py": """\
        import expkit

        @expkit.config
        def cfg():
            epochs = 1000

        @expkit.named_config
        def smoke():
            epochs = 1

        def exp_train(epochs):
            assert epochs == 1, "the smoke config was not applied"
            return epochs

        def exp_broken():
            raise ValueError("broken on purpose")
        """,
    "sub/exp_plain.py": """\
        import expkit

        def exp_plain(size=3):
            return size

        @expkit.parametrize("n", [1, 2, 3])
        def exp_swept(n):
            assert n == 1
        """,
    "tests/test_unit.py": """\
        def test_unit():
            assert True
        """,
}


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=project, capture_output=True, text=True, env=child_env(), timeout=120,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, PROJECT)


def test_smoke_runs_each_experiment_once_with_its_smoke_config(project: Path) -> None:
    proc = _pytest(project, "--expkit-smoke")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PASSED exp_models.py::exp_train" in proc.stdout
    assert "PASSED sub/exp_plain.py::exp_plain" in proc.stdout
    assert "PASSED sub/exp_plain.py::exp_swept" in proc.stdout  # once, with its first value
    assert "PASSED tests/test_unit.py::test_unit" in proc.stdout
    assert "FAILED exp_models.py::exp_broken - ValueError: broken on purpose" in proc.stdout
    assert "1 failed, 4 passed" in proc.stdout
    assert not (project / "runs").exists()  # unobserved: nothing stored


def test_without_the_flag_the_plugin_collects_nothing(project: Path) -> None:
    proc = _pytest(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "exp_" not in proc.stdout
