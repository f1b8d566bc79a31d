"""What a run records about its code and its host, gathered from the plugins."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from expkit.records import Dependency, Repository, Source
from expkit.utils import file_md5, is_under

if TYPE_CHECKING:
    from expkit.experiment import Experiment


@attrs.frozen
class ExperimentInfo:
    """What a run records about the experiment's code: sources, dependencies, git state."""

    name: str
    base_dir: str
    mainfile: str | None
    sources: tuple[Source, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    repositories: tuple[Repository, ...] = ()
    doc: str | None = None

    def as_sacred(self) -> dict:
        """The record as Sacred's observers receive it (``ex_info``)."""
        return {
            "name": self.name,
            "base_dir": self.base_dir,
            "sources": [[s.name, s.md5] for s in self.sources],
            "dependencies": [str(d) for d in self.dependencies],
            "repositories": [
                {"url": r.url, "commit": r.commit, "dirty": r.dirty} for r in self.repositories
            ],
            # Relative to the base dir, as Sacred records it: a source's name.
            "mainfile": os.path.relpath(self.mainfile, self.base_dir) if self.mainfile else None,
        }


def gather_experiment_info(experiment: Experiment) -> ExperimentInfo:
    """Ask the plugins for the experiment's sources, dependencies and repositories."""
    hook = experiment.plugin_manager.hook
    sources: dict[str, Source] = {}
    deps: dict[str, Dependency] = {}
    repos: list[Repository] = []
    for ing, _ in experiment.traverse_ingredients():
        for part in hook.expkit_experiment_info(experiment=ing):
            for s in part.get("sources", ()):
                sources.setdefault(s.name, s)
            for d in part.get("dependencies", ()):
                deps.setdefault(d.name, d)
            repos.extend(r for r in part.get("repositories", ()) if r not in repos)
    return ExperimentInfo(
        name=getattr(experiment, "name", experiment.path),
        base_dir=experiment.base_dir,
        mainfile=experiment.mainfile,
        sources=tuple(sorted(sources.values(), key=lambda s: s.name)),
        dependencies=tuple(sorted(deps.values(), key=lambda d: d.name.lower())),
        repositories=tuple(repos),
        doc=experiment.doc,
    )


def with_config_files(info: ExperimentInfo, paths: Iterable[str]) -> ExperimentInfo:
    """``info`` with the config files a run was given (``with params.yaml``) among its
    sources, those in its base dir: a rerun that changes an entry needs them beside the code."""
    base = os.path.realpath(info.base_dir)
    sources = {s.name: s for s in info.sources}
    for path in paths:
        real = os.path.realpath(path)
        if is_under(real, base):
            name = os.path.relpath(real, base)
            sources.setdefault(name, Source(name=name, md5=file_md5(real), path=real))
    return attrs.evolve(info, sources=tuple(sorted(sources.values(), key=lambda s: s.name)))


class IgnoreHostInfo(Exception):
    """Raise in a host-info gatherer to leave its entry out."""


@attrs.frozen
class HostInfoGetter:
    """A named function whose result becomes a host-info entry."""

    name: str
    getter: Callable[[], Any]

    def __call__(self) -> Any:
        """The entry's value."""
        return self.getter()

    get_info = __call__


def host_info_gatherer(name: str) -> Callable[[Callable[[], Any]], HostInfoGetter]:
    """Decorator for ``Experiment(additional_host_info=[...])``: the result goes under ``name``."""
    return lambda fn: HostInfoGetter(name, fn)


# Sacred's older, process-wide way (``@host_info_getter``): name -> function.
host_info_gatherers: dict[str, Callable[[], Any]] = {}


def host_info_getter(func: Callable | None = None, name: str | None = None) -> Any:
    """Deprecated decorator: record ``func()`` under ``name`` in every run's host info."""
    import warnings

    if func is None:
        return lambda f: host_info_getter(f, name=name)
    warnings.warn(
        "host_info_getter is deprecated; use @host_info_gatherer(name) with "
        "Experiment(additional_host_info=[...])",
        DeprecationWarning,
        stacklevel=2,
    )
    host_info_gatherers[name or func.__name__] = func
    return func


def gather_host_info(experiment: Experiment) -> dict:
    """The host record: every plugin's entries, then the experiment's own gatherers."""
    info: dict = {}
    for part in experiment.plugin_manager.hook.expkit_host_info(experiment=experiment):
        info.update(part)
    for name, func in list(host_info_gatherers.items()):
        if name not in info:  # the built-in entries win, as in Sacred
            try:
                info[name] = func()
            except IgnoreHostInfo:
                pass
    for getter in experiment.additional_host_info:
        if getter.name in info:
            raise KeyError(f"host info entry {getter.name!r} exists already; choose another name")
        try:
            info[getter.name] = getter.getter()
        except IgnoreHostInfo:
            pass
    return info
