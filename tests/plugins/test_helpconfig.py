"""``expkit plugins``, ``--trace-config``, ``--version`` and ``--help``."""

from __future__ import annotations

import re
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from cli_helpers import child_env, run_expkit, write_project

import expkit


def _builtin_plugins() -> list[tuple[str, str]]:
    """(name, module) of every entry point the expkit distribution itself declares."""
    eps = metadata.distribution("expkit").entry_points
    return sorted((ep.name, ep.value) for ep in eps if ep.group == "expkit")


def _plugin_line(name: str, origin: str, module: str) -> str:
    return rf"^  {re.escape(name)} +{re.escape(origin)} +\d+\.\d ms  {re.escape(module)}$"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path,
        {
            "exp_a.py": "def exp_a():\n    return 1\n",
            "expconf.py": "def expkit_run_completed(run):\n    pass\n",
        },
    )


def test_plugins_lists_every_builtin_with_origin_and_import_time(project: Path) -> None:
    proc = run_expkit("plugins", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "active plugins:"
    builtins = _builtin_plugins()
    assert len(builtins) >= 10
    origin = f"builtin (expkit {expkit.__version__})"
    for name, module in builtins:
        assert re.search(_plugin_line(name, origin, module), proc.stdout, re.M), (name, proc.stdout)
    assert all(module.startswith("expkit_plugins.") for _, module in builtins)


def test_plugins_honours_p_no(project: Path) -> None:
    proc = run_expkit("plugins", "-p", "no:mongo_store", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"^  mongo_store ", proc.stdout, re.M)
    assert re.search(r"^  tinydb_store ", proc.stdout, re.M)


def test_trace_config_in_a_run_lists_builtins_and_expconf(project: Path) -> None:
    proc = run_expkit("run", "-u", "--trace-config", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "active plugins:" in proc.stdout.splitlines()
    assert re.search(r"^  seeding +builtin \(expkit [^)]+\) +\d+\.\d ms  ", proc.stdout, re.M)
    conf = project / "expconf.py"
    assert re.search(_plugin_line(f"expconf:{conf}", "expconf", str(conf)), proc.stdout, re.M), (
        proc.stdout
    )


def test_trace_config_alone_lists_the_plugins(project: Path) -> None:
    proc = run_expkit("--trace-config", cwd=project)
    assert proc.returncode == 0
    assert proc.stdout.startswith("active plugins:\n")


PLUGIN_MODULE = """\
from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_report_header(config):
    return "labplugin is here"
"""


@pytest.fixture
def installed_plugin(tmp_path: Path) -> dict[str, str]:
    """A real third-party distribution, ``expkit-labplugin 1.2.0``, with an entry point."""
    site = tmp_path / "site"
    (site / "expkit_labplugin-1.2.0.dist-info").mkdir(parents=True)
    (site / "expkit_labplugin-1.2.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: expkit-labplugin\nVersion: 1.2.0\n"
    )
    (site / "expkit_labplugin-1.2.0.dist-info" / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [expkit]
            labplugin = labplugin_module
            """
        )
    )
    (site / "labplugin_module.py").write_text(PLUGIN_MODULE)
    return child_env(PYTHONPATH=str(site))


def test_a_third_party_entry_point_is_listed_with_its_distribution(
    project: Path, installed_plugin: dict[str, str]
) -> None:
    proc = run_expkit("plugins", cwd=project, env=installed_plugin)
    assert proc.returncode == 0, proc.stderr
    line = _plugin_line("labplugin", "entrypoint (expkit-labplugin 1.2.0)", "labplugin_module")
    assert re.search(line, proc.stdout, re.M), proc.stdout
    run = run_expkit("run", "-u", cwd=project, env=installed_plugin)
    assert "labplugin is here" in run.stdout.splitlines()
    assert "plugins: labplugin-1.2.0" in run.stdout.splitlines()


def test_autoload_can_be_disabled_and_p_still_loads(
    project: Path, installed_plugin: dict[str, str]
) -> None:
    env = {**installed_plugin, "EXPKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = run_expkit("plugins", cwd=project, env=env)
    assert "labplugin" not in proc.stdout
    assert re.search(r"^  seeding ", proc.stdout, re.M)  # built-ins still load
    proc = run_expkit("plugins", "-p", "labplugin", cwd=project, env=env)
    assert re.search(r"^  labplugin +-p", proc.stdout, re.M), proc.stdout


def test_p_no_blocks_a_third_party_plugin(project: Path, installed_plugin: dict[str, str]) -> None:
    proc = run_expkit("run", "-u", "-p", "no:labplugin", cwd=project, env=installed_plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "labplugin is here" not in proc.stdout


def test_version(project: Path) -> None:
    proc = run_expkit("--version", cwd=project)
    assert (proc.returncode, proc.stdout) == (0, f"expkit {expkit.__version__}\n")


def test_help_lists_the_run_options(project: Path) -> None:
    proc = run_expkit("--help", cwd=project)
    assert proc.returncode == 0
    for option in ("-o KEY=VALUE", "--with NAMED", "-k EXPR", "--store URL", "--unobserved"):
        assert option in proc.stdout
    for option in ("--capture", "--seed", "--comment", "--exitfirst", "--collect-only", "-p NAME"):
        assert option in proc.stdout


ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_and_the_docs_agree(project: Path) -> None:
    proc = run_expkit("--help", cwd=project)
    listed = re.findall(r"^  (\S+)", proc.stdout.split("commands:\n", 1)[1].split("\n\n")[0], re.M)
    COMMANDS = [c for c in listed if not c.startswith("-")]
    assert COMMANDS == ["run", "config", "plugins", "rerun", "runs", "sync", "tune", "ui"]
    synopsis = (ROOT / "docs" / "cli.rst").read_text().split(".. code-block:: text", 1)[1]
    synopsis = synopsis.split("\n\n", 2)[1]
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert re.search(rf"expkit {command}\b", synopsis), command
        assert re.search(rf"expkit {command}\b", readme), command


def test_command_help_shows_that_commands_options_only(project: Path) -> None:
    run = run_expkit("run", "--help", cwd=project)
    assert run.stdout.startswith("usage: expkit run [PATH|NODEID ...] [options]\n")
    assert "--exitfirst" in run.stdout and "--capture" in run.stdout
    assert "--columns" not in run.stdout and "--check" not in run.stdout
    rerun = run_expkit("rerun", "-h", cwd=project)
    assert rerun.stdout.startswith("usage: expkit rerun ID [options]\n")
    assert "--check" in rerun.stdout and "--exitfirst" not in rerun.stdout


def test_the_readme_says_which_line_names_the_store(project: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "the `stored ... in` line just before the closing" in readme
    lines = run_expkit("run", cwd=project).stdout.splitlines()
    assert lines[-2].startswith("stored 1 run(s) in ")
