"""Walking real folder trees for experiment files, and splitting node ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expkit.discovery import find_experiment_files, split_node_id
from expkit.errors import UsageError

PATTERNS = ["exp_*.py"]


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")


def found(root: Path, patterns: list[str] = PATTERNS) -> list[str]:
    """The files found under ``root``, relative to it, in order."""
    return [path.relative_to(root).as_posix() for path in find_experiment_files([root], patterns)]


def test_walks_recursively_in_sorted_order_with_a_folders_files_first(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "exp_b.py",
        "exp_a.py",
        "zeta/exp_z.py",
        "alpha/exp_y.py",
        "alpha/inner/exp_x.py",
        "alpha/exp_c.py",
    )
    assert found(tmp_path) == [
        "exp_a.py",
        "exp_b.py",
        "alpha/exp_c.py",
        "alpha/exp_y.py",
        "alpha/inner/exp_x.py",
        "zeta/exp_z.py",
    ]


def test_only_names_matching_a_pattern_are_taken(tmp_path: Path) -> None:
    touch(tmp_path, "exp_a.py", "exp_a.pyc", "test_a.py", "my_exp_a.py", "exp_b.txt", "study_c.py")
    assert found(tmp_path) == ["exp_a.py"]
    assert found(tmp_path, ["exp_*.py", "study_*.py"]) == ["exp_a.py", "study_c.py"]


def test_no_patterns_match_no_walked_file(tmp_path: Path) -> None:
    touch(tmp_path, "exp_a.py", "sub/exp_b.py")
    assert found(tmp_path, []) == []


def test_a_folder_named_like_a_pattern_is_walked_not_taken(tmp_path: Path) -> None:
    touch(tmp_path, "exp_dir.py/exp_inner.py")
    assert found(tmp_path) == ["exp_dir.py/exp_inner.py"]


@pytest.mark.parametrize(
    "folder",
    [
        ".hidden",
        ".git",
        ".tox",
        "__pycache__",
        "node_modules",
        "build",
        "dist",
        "mypkg.egg-info",
        "site-packages",
        "lib/python3.11/site-packages",
    ],
)
def test_tooling_folders_are_skipped(tmp_path: Path, folder: str) -> None:
    touch(tmp_path, "exp_kept.py", f"{folder}/exp_skipped.py", f"{folder}/sub/exp_deeper.py")
    assert found(tmp_path) == ["exp_kept.py"]


def test_a_folder_with_pyvenv_cfg_is_skipped_whatever_its_name(tmp_path: Path) -> None:
    touch(tmp_path, "myenv/pyvenv.cfg", "myenv/lib/exp_in_venv.py", "exp_kept.py")
    assert found(tmp_path) == ["exp_kept.py"]


@pytest.mark.parametrize("name", ["venv", "env"])
def test_venv_names_are_skipped_only_when_they_hold_an_activate_script(
    tmp_path: Path, name: str
) -> None:
    touch(tmp_path, f"{name}/bin/activate", f"{name}/exp_in_venv.py")
    touch(tmp_path, f"other/{name}/exp_kept.py")  # same name, no activate script: a plain folder
    assert found(tmp_path) == [f"other/{name}/exp_kept.py"]


def test_windows_style_venv_is_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "env/Scripts/activate", "env/exp_in_venv.py", "exp_kept.py")
    assert found(tmp_path) == ["exp_kept.py"]


def test_a_folder_given_explicitly_is_walked_even_if_it_would_be_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "build/exp_generated.py")
    assert find_experiment_files([tmp_path / "build"], PATTERNS) == [
        tmp_path / "build" / "exp_generated.py"
    ]


def test_a_file_given_explicitly_is_taken_even_if_it_does_not_match(tmp_path: Path) -> None:
    touch(tmp_path, "train.py", "__pycache__/exp_odd.py")
    files = [tmp_path / "train.py", tmp_path / "__pycache__" / "exp_odd.py"]
    assert find_experiment_files(files, PATTERNS) == files


def test_paths_keep_the_order_given_and_duplicates_are_dropped(tmp_path: Path) -> None:
    touch(tmp_path, "a/exp_1.py", "a/exp_2.py", "b/exp_3.py")
    result = find_experiment_files(
        [tmp_path / "b", tmp_path / "a" / "exp_2.py", tmp_path / "a", tmp_path / "b"], PATTERNS
    )
    assert result == [
        tmp_path / "b" / "exp_3.py",
        tmp_path / "a" / "exp_2.py",
        tmp_path / "a" / "exp_1.py",
    ]


def test_relative_paths_stay_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "exps/exp_a.py", "exps/sub/exp_b.py")
    monkeypatch.chdir(tmp_path)
    assert find_experiment_files([Path("exps")], PATTERNS) == [
        Path("exps/exp_a.py"),
        Path("exps/sub/exp_b.py"),
    ]
    # The same file reached as "." and as "exps/exp_a.py" is one file.
    assert find_experiment_files([Path("exps/exp_a.py"), Path(".")], PATTERNS) == [
        Path("exps/exp_a.py"),
        Path("exps/sub/exp_b.py"),
    ]


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "exp_x.py"
    with pytest.raises(UsageError) as info:
        find_experiment_files([tmp_path, missing], PATTERNS)
    assert str(info.value) == f"file or directory not found: {missing}"


def test_an_empty_folder_gives_nothing(tmp_path: Path) -> None:
    assert find_experiment_files([tmp_path], PATTERNS) == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_folders_are_followed_but_cycles_are_not(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    touch(tree, "real/exp_a.py")
    touch(outside, "exp_linked.py")
    (tree / "real" / "loop").symlink_to(tree / "real", target_is_directory=True)
    (tree / "linked").symlink_to(outside, target_is_directory=True)
    assert found(tree) == ["linked/exp_linked.py", "real/exp_a.py"]


def test_a_large_nested_tree_is_walked_completely(tmp_path: Path) -> None:
    expected = []
    for a in range(5):
        for b in range(5):
            for c in range(8):
                touch(tmp_path, f"d{a}/s{b}/other_{c}.py", f"d{a}/s{b}/exp_{c}.py")
                expected.append(f"d{a}/s{b}/exp_{c}.py")
    assert found(tmp_path) == expected


# split_node_id


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("exp_iris.py", ("exp_iris.py", None)),
        ("dir/sub", ("dir/sub", None)),
        ("exp_iris.py::exp_rbf_svm", ("exp_iris.py", "exp_rbf_svm")),
        ("sub/exp_iris.py::main", ("sub/exp_iris.py", "main")),
        ("exp_iris.py::exp_rbf_svm[C=3]", ("exp_iris.py", "exp_rbf_svm[C=3]")),
        ("exp_iris.py::Outer::inner", ("exp_iris.py", "Outer::inner")),
        ("C:\\work\\exp_a.py::main", ("C:\\work\\exp_a.py", "main")),
    ],
)
def test_split_node_id(arg: str, expected: tuple[str, str | None]) -> None:
    assert split_node_id(arg) == expected


@pytest.mark.parametrize("arg", ["exp_iris.py::", "::main", "::"])
def test_split_node_id_rejects_an_empty_part(arg: str) -> None:
    with pytest.raises(UsageError) as info:
        split_node_id(arg)
    assert str(info.value) == f"malformed node id {arg!r}: expected PATH::NAME"
