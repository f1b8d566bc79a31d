"""``-k EXPR``: pytest's expression grammar over node ids, through the real command."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import error_lines, run_expkit, stored_runs, write_project

from expkit.nodes import ExitCode

ALL = [
    "exp_net.py::exp_mnist",
    "exp_net.py::exp_cifar",
    "models/exp_svm.py::exp_linear",
    "models/exp_svm.py::exp_rbf",
    "models/slow/exp_big.py::exp_huge_cifar",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path,
        {
            "exp_net.py": "def exp_mnist():\n    return 1\n\ndef exp_cifar():\n    return 2\n",
            "models/exp_svm.py": "def exp_linear():\n    return 3\n\n"
            "def exp_rbf():\n    return 4\n",
            "models/slow/exp_big.py": "def exp_huge_cifar():\n    return 5\n",
        },
    )


def _selected(project: Path, expression: str) -> list[str]:
    proc = run_expkit("--collect-only", "-q", "-k", expression, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("svm", [2, 3]),
        ("SVM", [2, 3]),
        ("cifar", [1, 4]),
        ("svm and not linear", [3]),
        ("mnist or rbf", [0, 3]),
        ("(mnist or cifar) and not slow", [0, 1]),
        ("not models", [0, 1]),
        ("models and not (slow or linear)", [3]),
        ("exp_net.py::exp_cifar", [1]),
        ("models/slow", [4]),
    ],
)
def test_k_selects_by_substring_expression(
    project: Path, expression: str, expected: list[int]
) -> None:
    assert _selected(project, expression) == [ALL[i] for i in expected]


def test_k_selects_what_runs(project: Path) -> None:
    proc = run_expkit("run", "-k", "svm and not linear", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [r["experiment"]["name"] for r in stored_runs(project / "runs")]
    assert names == ["models/exp_svm.py::exp_rbf"]
    assert "collected 5 experiments / 4 deselected" in proc.stdout


def test_k_combines_with_paths(project: Path) -> None:
    proc = run_expkit("--collect-only", "-q", "models", "-k", "cifar", cwd=project)
    assert [line for line in proc.stdout.splitlines() if "::" in line] == [ALL[4]]


@pytest.mark.parametrize(
    ("expression", "where"),
    [
        ("svm and", "end of input"),
        ("(svm", "column"),
        ("svm)", "column"),
        ("__import__('os')", "column"),
        ("svm & rbf", "column"),
    ],
)
def test_a_malformed_k_is_one_line_and_exit_code_4(
    project: Path, expression: str, where: str
) -> None:
    proc = run_expkit("run", "-k", expression, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "-k" in lines[0] and where in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (project / "runs").exists()


def test_a_k_that_selects_nothing_runs_nothing(project: Path) -> None:
    proc = run_expkit("run", "-k", "transformer", cwd=project)
    assert proc.returncode in (ExitCode.USAGE_ERROR, ExitCode.NO_EXPERIMENTS_COLLECTED)
    assert "transformer" in proc.stderr
    assert not (project / "runs").exists()
