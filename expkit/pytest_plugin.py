"""A pytest plugin: ``pytest --expkit-smoke`` runs every experiment of a project once.

Installed with expkit (entry point group ``pytest11``) and idle unless asked for: with
``--expkit-smoke``, pytest collects the ``exp_*.py`` files beside the tests, and each
experiment in them is a test that runs it unobserved (nothing is stored), with its
``smoke`` named config when it has one, so that a test suite can check that its
experiments still run without paying for a full run.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

SMOKE_CONFIG = "smoke"


def pytest_addoption(parser: Any) -> None:
    parser.getgroup("expkit").addoption(
        "--expkit-smoke",
        action="store_true",
        default=False,
        help="collect exp_*.py files and run each experiment once, unobserved, "
        f"with its '{SMOKE_CONFIG}' named config when it has one",
    )


def pytest_collect_file(file_path: Path, parent: Any) -> Any:
    config = parent.config
    if not config.getoption("expkit_smoke") or file_path.suffix != ".py":
        return None
    expkit_config = _expkit_config(config)
    if any(fnmatch.fnmatch(file_path.name, p) for p in expkit_config.settings.file_patterns):
        return ExperimentFile.from_parent(parent, path=file_path)
    return None


_CONFIG_KEY = pytest.StashKey[Any]()


def _expkit_config(config: Any) -> Any:
    """The expkit configuration of the project pytest runs in, made once per session."""
    if _CONFIG_KEY not in config.stash:
        from expkit.cli import make_config

        expkit_config = make_config(["run", "-u"], invocation_dir=Path(str(config.rootpath)))
        expkit_config.pluginmanager.hook.expkit_configure.call_historic(
            kwargs={"config": expkit_config}
        )
        # One test per experiment: a parametrized one runs once, with its first values.
        expkit_config.option.sweep_plan = None
        config.stash[_CONFIG_KEY] = expkit_config
    return config.stash[_CONFIG_KEY]


class ExperimentFile(pytest.File):
    """An ``exp_*.py`` file: one test per experiment in it."""

    def collect(self) -> Any:
        from expkit.nodes import CollectError

        expkit_config = _expkit_config(self.config)
        hook = expkit_config.pluginmanager.hook
        for nodes in hook.expkit_collect_file(path=self.path, config=expkit_config):
            for node in nodes or ():
                if isinstance(node, CollectError):
                    raise self.CollectError(node.message)
                yield ExperimentItem.from_parent(self, name=node.name, experiment=node.experiment)


class ExperimentItem(pytest.Item):
    """One experiment, run once unobserved (with its ``smoke`` named config if it has one)."""

    def __init__(self, *, experiment: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.experiment = experiment

    def runtest(self) -> None:
        from expkit.pluginmanager import set_plugin_manager

        named = dict(self.experiment.gather_named_configs())
        previous = set_plugin_manager(self.experiment.plugin_manager)
        try:
            self.experiment.run(
                named_configs=[SMOKE_CONFIG] if SMOKE_CONFIG in named else [],
                options={"--unobserved": True, "--capture": "no"},
            )
        finally:
            set_plugin_manager(previous)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"experiment {self.name}"
