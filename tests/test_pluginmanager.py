"""The plugin host: built-in and third-party plugins, blocking, autoload, a core without plugins."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
import pytest
from cli_helpers import fresh_python

import expkit
from expkit import Experiment, hookspec
from expkit.errors import UsageError
from expkit.pluginmanager import PluginManager, create_plugin_manager, hookimpl

# The concerns SPEC 5 names as built-in plugins (the group may declare more).
CONCERNS = {
    "config_files",
    "seeding",
    "capture",
    "sources",
    "host",
    "commands",
    "script",
    "file_store",
    "tinydb_store",
    "mongo_store",
}

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"


# What the expkit distribution declares in its entry-point groups: name -> module.
def _declared(group: str) -> dict[str, str]:
    return {
        ep.name: ep.value
        for ep in metadata.entry_points(group=group)
        if ep.dist is not None and ep.dist.name == "expkit"
    }


# What an experiment run from Python or its own command line loads, and what only the
# expkit command loads too.
RUN_BUILTINS = set(_declared("expkit"))
COMMAND_PLUGINS = set(_declared("expkit.command"))
DECLARED = {**_declared("expkit"), **_declared("expkit.command")}
BUILTINS = set(DECLARED)

# The hooks a third-party store needs, with their arguments (SPEC 5).
STORE_HOOKS = {
    "expkit_addoption": ["parser"],
    "expkit_configure": ["config"],
    "expkit_store_for_url": ["url"],
    "expkit_run_queued": ["run"],
    "expkit_run_started": ["run"],
    "expkit_run_heartbeat": ["run"],
    "expkit_run_completed": ["run"],
    "expkit_run_failed": ["run"],
    "expkit_run_interrupted": ["run"],
    "expkit_log_metrics": ["run", "metrics"],
    "expkit_artifact_added": ["run", "artifact"],
    "expkit_resource_added": ["run", "resource"],
}

PLUGIN_MODULE = '''
"""A third-party plugin: adds a host-info entry and notes every completed run."""
import os

from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_host_info(experiment):
    return {"from_fake_plugin": experiment.name}


@hookimpl
def expkit_run_completed(run):
    with open(os.environ["FAKE_PLUGIN_LOG"], "a") as f:
        f.write(f"completed {run.result}\\n")
'''

DRIVER = """
import json
import sys

from expkit import Experiment
from expkit.pluginmanager import create_plugin_manager

pm = create_plugin_manager(blocked=json.loads(sys.argv[1]))
ex = Experiment("driven", plugin_manager=pm)


@ex.main
def main():
    return 42


run = ex.run(options={"--capture": "no"})
origins = {name: info.origin for name, info in pm.infos.items()}
print(json.dumps({"origins": origins, "host_info": run.host_info, "config": run.config}))
"""


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    """A folder holding an 'installed' distribution that declares an ``expkit`` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_expkit_plugin.py").write_text(PLUGIN_MODULE)
    dist_info = site / "fake_expkit_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-expkit-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[expkit]\nfake = fake_expkit_plugin\n")
    return site


def _drive(
    tmp_path: Path, site: Path, blocked: list[str] = (), **env: str
) -> tuple[dict, list[str]]:
    """Run the driver in a fresh process with ``site`` on the path; return its report and log."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log = tmp_path / "plugin.log"
    full_env = dict(os.environ)
    full_env.pop("EXPKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    full_env.pop("EXPKIT_PLUGINS", None)
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    full_env["FAKE_PLUGIN_LOG"] = str(log)
    proc = subprocess.run(
        [sys.executable, str(driver), json.dumps(list(blocked))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=full_env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(proc.stdout.strip().splitlines()[-1]), lines


def _fresh_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    """Write module ``name`` into an importable folder; forget it again after the test."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


class Recorder:
    """A plugin object that notes the run hooks it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def expkit_run_started(self, run: Any) -> None:
        self.calls.append(("started", run.status))

    @hookimpl
    def expkit_run_completed(self, run: Any) -> None:
        self.calls.append(("completed", run.result))


def _run_main(pm: Any, result: Any = "done") -> Any:
    ex = Experiment("pm_probe", plugin_manager=pm)

    @ex.main
    def main():
        return result

    return ex.run(options={"--capture": "no"})


# --- built-in plugins ---------------------------------------------------------------


def test_builtin_plugins_come_from_the_expkit_entry_point_group() -> None:
    pm = create_plugin_manager(command=True)
    assert CONCERNS <= BUILTINS
    assert {name for name, info in pm.infos.items() if info.origin == "builtin"} == BUILTINS
    for name, module in DECLARED.items():
        info = pm.infos[name]
        assert (info.origin, info.module, info.distribution) == ("builtin", module, "expkit")
        assert pm.get_plugin(name) is sys.modules[module]


def test_every_module_in_plugins_is_loaded_as_an_entry_point() -> None:
    pm = create_plugin_manager(command=True)
    modules = {p.stem for p in PLUGINS_DIR.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in PLUGINS_DIR.glob("*/__init__.py")}  # plugin packages
    assert {module.rsplit(".", 1)[-1] for module in DECLARED.values()} == modules
    for name in BUILTINS:
        # The module of the built-in plugins' package (from plugins/, installed or not).
        assert pm.get_plugin(name).__name__.startswith("expkit_plugins.")


def test_an_experiments_manager_leaves_out_the_command_plugins() -> None:
    pm = create_plugin_manager()
    loaded = {name for name, info in pm.infos.items() if info.origin == "builtin"}
    assert COMMAND_PLUGINS and not COMMAND_PLUGINS & RUN_BUILTINS
    assert loaded == RUN_BUILTINS
    assert loaded >= CONCERNS


# Modules a run without stores has no use for; each costs start-up (issue #5, P1).
NOT_FOR_A_PLAIN_RUN = {
    "importlib.metadata",
    "pathlib",
    "shutil",
    "subprocess",
    "tempfile",
    "uuid",
    "secrets",
    "tinydb",
    "pymongo",
    "expkit.delivery",
    "expkit.nodes",
    # The stores' code: their plugin modules only declare a backend.
    "expkit.store",
    "expkit_plugins.file_store.storage",
    "expkit_plugins.tinydb_store.storage",
    "expkit_plugins.mongo_store.storage",
}


def test_python_exp_py_imports_only_what_a_run_uses(tmp_path: Path) -> None:
    script = tmp_path / "exp_quiet.py"
    script.write_text(
        "import sys\n"
        "from expkit import Experiment\n"
        "ex = Experiment('quiet')\n"
        "@ex.main\n"
        "def main():\n"
        "    return sorted(sys.modules)\n"
        "if __name__ == '__main__':\n"
        "    print(ex.run_commandline().result)\n"
    )
    modules = set(ast.literal_eval(fresh_python(str(script), "-l", "WARNING", cwd=tmp_path)))
    plugins = {m.rsplit(".", 1)[-1] for m in modules if m.startswith("expkit_plugins.")}
    assert plugins == RUN_BUILTINS
    # What the interpreter imports by itself (site, .pth files: an editable install's finder
    # imports pathlib) does not count.
    bare = fresh_python("-c", "import sys; print(sorted(sys.modules))", cwd=tmp_path)
    added = modules - set(ast.literal_eval(bare))
    assert added & NOT_FOR_A_PLAIN_RUN == set()


def test_the_expkit_command_loads_the_command_plugins(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "expkit", "plugins"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    for name in COMMAND_PLUGINS:
        assert f"  {name} " in done.stdout


def test_a_builtin_plugin_does_its_work_in_a_run() -> None:
    run = _run_main(create_plugin_manager())
    assert isinstance(run.config["seed"], int)  # seeding
    assert run.host_info["hostname"]  # host


# --- blocking -----------------------------------------------------------------------


def test_blocking_seeding_by_name_leaves_no_seed_entry() -> None:
    pm = create_plugin_manager(blocked=["seeding"])
    assert "seeding" not in pm.infos
    assert pm.is_blocked("seeding")
    assert not pm.has_plugin("seeding")
    run = _run_main(pm)
    assert run.status == "COMPLETED"
    assert "seed" not in run.config


def test_blocking_by_module_name_blocks_the_entry_point_too() -> None:
    pm = create_plugin_manager(blocked=["expkit_plugins.host"])
    assert "host" not in pm.infos
    assert "hostname" not in _run_main(pm).host_info


def test_a_plugin_adds_its_own_hooks_through_expkit_addhooks() -> None:
    class NewHooks:
        @staticmethod
        @pluggy.HookspecMarker("expkit")
        def expkit_new_event(value):
            """A hook another plugin may implement."""

    class Adds:
        @hookimpl
        def expkit_addhooks(self, pluginmanager):
            pluginmanager.add_hookspecs(NewHooks)

    class Answers:
        @hookimpl
        def expkit_new_event(self, value):
            return value * 2

    pm = create_plugin_manager(plugins=[Adds(), Answers()])
    assert pm.hook.expkit_new_event(value=21) == [42]


def test_an_entry_point_may_name_an_object_and_extras() -> None:
    pm = PluginManager()
    plugin = pm.register_module("os:path [speedups]", name="paths", origin="entrypoint")
    assert plugin is os.path
    assert pm.get_plugin("paths") is os.path


def test_blocking_one_plugin_keeps_the_others() -> None:
    pm = create_plugin_manager(blocked=["seeding"])
    loaded = {name for name, info in pm.infos.items() if info.origin == "builtin"}
    assert loaded == RUN_BUILTINS - {"seeding"}


# --- third-party plugins and the autoload switch ---------------------------------------


def test_third_party_entry_point_is_loaded_and_its_hooks_fire(
    tmp_path: Path, third_party: Path
) -> None:
    report, log = _drive(tmp_path, third_party)
    assert report["origins"]["fake"] == "entrypoint"
    assert all(report["origins"][name] == "builtin" for name in RUN_BUILTINS)
    assert report["host_info"]["from_fake_plugin"] == "driven"
    assert log == ["completed 42"]


def test_disable_autoload_keeps_third_party_out_and_builtins_in(
    tmp_path: Path, third_party: Path
) -> None:
    report, log = _drive(tmp_path, third_party, EXPKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "fake" not in report["origins"]
    assert {n for n, o in report["origins"].items() if o == "builtin"} == RUN_BUILTINS
    assert "from_fake_plugin" not in report["host_info"]
    assert "seed" in report["config"]
    assert log == []


def test_a_third_party_plugin_can_be_blocked_by_name(tmp_path: Path, third_party: Path) -> None:
    report, log = _drive(tmp_path, third_party, blocked=["fake"])
    assert "fake" not in report["origins"]
    assert "from_fake_plugin" not in report["host_info"]
    assert log == []


def test_expkit_plugins_variable_loads_a_module_even_without_autoload(
    tmp_path: Path, third_party: Path
) -> None:
    report, log = _drive(
        tmp_path,
        third_party,
        EXPKIT_DISABLE_PLUGIN_AUTOLOAD="1",
        EXPKIT_PLUGINS="fake_expkit_plugin",
    )
    assert report["origins"]["fake_expkit_plugin"] == "env"
    assert report["host_info"]["from_fake_plugin"] == "driven"
    assert log == ["completed 42"]


# --- plugins named in the environment and plugin objects --------------------------------


def test_expkit_plugins_variable_loads_modules_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_module(
        tmp_path,
        monkeypatch,
        "env_plugin_one",
        """
        from expkit.pluginmanager import hookimpl

        @hookimpl
        def expkit_host_info(experiment):
            return {"one": 1}
        """,
    )
    _fresh_module(
        tmp_path,
        monkeypatch,
        "env_plugin_two",
        """
        from expkit.pluginmanager import hookimpl

        @hookimpl
        def expkit_host_info(experiment):
            return {"two": 2}
        """,
    )
    monkeypatch.setenv("EXPKIT_PLUGINS", "env_plugin_one, env_plugin_two")
    pm = create_plugin_manager()
    assert pm.infos["env_plugin_one"].origin == "env"
    assert pm.infos["env_plugin_two"].origin == "env"
    host_info = _run_main(pm).host_info
    assert (host_info["one"], host_info["two"]) == (1, 2)


def test_expkit_plugins_naming_a_missing_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPKIT_PLUGINS", "no_such_expkit_plugin_module")
    with pytest.raises(UsageError, match="no_such_expkit_plugin_module"):
        create_plugin_manager()


def test_a_plugin_object_receives_the_run_hooks() -> None:
    recorder = Recorder()
    pm = create_plugin_manager(plugins=[recorder])
    name = pm.get_name(recorder)
    assert pm.infos[name].origin == "object"
    _run_main(pm, result=7)
    assert recorder.calls == [("started", "RUNNING"), ("completed", 7)]


def test_a_plugin_object_on_one_manager_does_not_reach_another() -> None:
    recorder = Recorder()
    create_plugin_manager(plugins=[recorder])
    _run_main(create_plugin_manager())
    assert recorder.calls == []


def test_early_plugin_module_is_registered_with_origin_p(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_module(
        tmp_path,
        monkeypatch,
        "early_plugin",
        """
        from expkit.pluginmanager import hookimpl

        @hookimpl
        def expkit_host_info(experiment):
            return {"early": True}
        """,
    )
    pm = create_plugin_manager(early=["early_plugin"])
    assert pm.infos["early_plugin"].origin == "-p"
    assert _run_main(pm).host_info["early"] is True


# --- hook specifications ---------------------------------------------------------------


def test_every_hook_spec_is_documented() -> None:
    specs = [
        (name, fn)
        for name, fn in inspect.getmembers(hookspec, inspect.isfunction)
        if name.startswith("expkit_")
    ]
    assert len(specs) >= len(STORE_HOOKS)
    undocumented = [name for name, fn in specs if len((fn.__doc__ or "").strip()) < 20]
    assert undocumented == []


def test_the_hooks_a_store_needs_have_the_specified_arguments() -> None:
    pm = create_plugin_manager()
    for name, args in STORE_HOOKS.items():
        caller = getattr(pm.hook, name)
        assert list(caller.spec.argnames) == args, name
    assert pm.hook.expkit_store_for_url.spec.opts["firstresult"] is True


def test_a_hookimpl_with_an_unknown_argument_is_refused() -> None:
    class Broken:
        @hookimpl
        def expkit_run_started(self, run, no_such_argument):
            pass

    with pytest.raises(Exception, match="no_such_argument"):
        create_plugin_manager(plugins=[Broken()])


# --- the core imports no plugin ---------------------------------------------------------


def test_importing_the_core_loads_no_plugin(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import pkgutil, sys
        import expkit
        for info in pkgutil.walk_packages(expkit.__path__, "expkit."):
            if info.name == "expkit.__main__":
                continue  # runs the command line
            try:
                __import__(info.name)
            except ImportError:
                pass
        from expkit import Experiment
        Experiment("quiet", interactive=True)
        print(sorted(m for m in sys.modules if m.startswith("expkit_plugins")))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_core_module_imports_a_plugin() -> None:
    core = Path(expkit.__file__).parent
    offenders = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("expkit_plugins")]
    assert offenders == []


@pytest.mark.parametrize("name", ["", "no_such_module_xyz", "expkit:no_such_attribute"])
def test_a_plugin_that_cannot_load_is_a_usage_error_naming_it(name: str) -> None:
    with pytest.raises(UsageError, match=f"^cannot load plugin {name!r}: "):
        create_plugin_manager(early=[name])
