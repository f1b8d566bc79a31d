"""``expkit tune``: hyperparameter search with Optuna, every trial a stored run.

``expkit tune NODEID --sweep 'C=loguniform(1e-3,1e3)' --trials 50`` asks an Optuna study for
trials, runs each as a run of the experiment (here, in ``-n`` local worker processes or on
Dask workers) and tells the study its objective as soon as it ends: a worker starts the next
trial the moment it is free. The study is kept beside the store (:mod:`.study`), so the
same command continues it. A trial's run that logs its objective metric with
``_run.log_scalar`` has each point handed to the pruner, which may stop it: the run ends
with status ``PRUNED``.

This package is loaded by every ``expkit`` command (not by ``python exp.py``); Optuna is
imported only when ``expkit tune`` runs, by :mod:`.study`.
"""

from __future__ import annotations

import atexit
import gc
from typing import Any

from expkit.errors import ExpkitInterrupt, UsageError
from expkit.pluginmanager import hookimpl

SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "none")


class TrialPruned(ExpkitInterrupt):
    """Stops a trial's run when the pruner says so; the run's status becomes ``PRUNED``."""

    STATUS = "PRUNED"


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "tune",
        "tune NODEID --sweep ...",
        "search hyperparameters with Optuna, every trial a stored run",
        (
            *("sweeps", "trials", "minimize", "maximize", "objective", "sampler", "pruner"),
            *("study", "tune_timeout", "importance", "numprocesses", "dask", "overrides"),
            *("named", "stores", "seed", "capture", "comment", "force", "verbose", "quiet"),
            "plugins",
        ),
        "tune",
    )
    group = parser.getgroup("tune", "hyperparameter search (expkit tune)")
    group.addoption(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="run trials until the study has N (the earlier sessions' count)",
    )
    group.addoption(
        "--minimize", action="store_true", help="tune: look for the lowest objective (the default)"
    )
    group.addoption(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="how trials are chosen: tpe (the default), random, cmaes, or grid (every "
        "combination of value lists)",
    )
    group.addoption(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="median: stop a trial whose objective metric is worse than the median of "
        "earlier trials at the same step (the default); none",
    )
    group.addoption(
        "--study", default=None, metavar="NAME", help="the study's name (default: the node id)"
    )
    group.addoption(
        "--timeout",
        dest="tune_timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after SECONDS; the running ones finish",
    )
    group.addoption(
        "--importance",
        action="store_true",
        help="print how much each parameter matters to the objective (fANOVA)",
    )


@hookimpl
def expkit_configure(config: Any) -> None:
    if config.command != "tune":
        return
    option = config.option
    if option.minimize and option.maximize:
        raise UsageError("give --minimize or --maximize, not both")
    if option.samples is not None:
        raise UsageError("--samples is for random sweeps of 'expkit run'; tune takes --trials N")
    if option.sample_seed is not None:
        raise UsageError(
            "--sample-seed is for random sweeps of 'expkit run'; --seed N seeds tune's sampler"
        )
    if option.skip_completed:
        raise UsageError("--skip-completed is for 'expkit run'; tune goes on with its study")
    if option.collect_only:
        raise UsageError("--collect-only is for 'expkit run'; tune runs one experiment's trials")
    if option.trials is not None and option.trials < 1:
        raise UsageError(f"--trials must be 1 or more, got {option.trials}")
    if option.tune_timeout is not None and not option.tune_timeout > 0:
        raise UsageError(
            f"--timeout must be a number of seconds above 0, got {option.tune_timeout}"
        )
    if option.pruner != "none" and option.objective:
        # Here and in every worker process: the trials' runs hand their points to the pruner.
        config.pluginmanager.register(PruningWatch(option.objective), "tune-pruning")


@hookimpl
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "tune":
        return None
    from expkit_plugins.workers import start_workers, stop_workers

    option = config.option
    started: Any = list  # no workers started ahead
    if not option.importance and option.numprocesses and not getattr(option, "dask", None):
        # Started first, the workers get ready while Optuna is imported and the study opened;
        # the driver takes them over, and those it does not need are stopped below.
        started = start_workers(min(option.numprocesses, option.trials or 1), trial_spec(config))
    try:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UsageError("expkit tune needs Optuna: pip install 'expkit[tune]'") from None
        from expkit_plugins.tune import study

        if option.importance:
            return study.print_importance(config)
        return study.tune(config, started)
    finally:
        stop_workers(started())
        if option.numprocesses or getattr(option, "dask", None):
            # Only a driver: every trial ran in another process and is stored. At its exit
            # Python would free Optuna's and expkit's objects one by one, a tenth of a
            # second the user waits for; frozen, they go with the process.
            atexit.register(gc.freeze)


def trial_spec(config: Any) -> Any:
    """What a ``-n`` worker needs to run the trials: the session, read as tune's options."""
    import attrs

    from expkit_plugins.workers import session_spec

    return attrs.evolve(session_spec(config), command="tune")


# --- in the processes that run trials ---------------------------------------------------


class PruningWatch:
    """Hands each point of the objective metric a trial's run logs to the pruner."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    @hookimpl
    def expkit_run_started(self, run: Any) -> None:
        study = run.meta_info.get("study")
        if isinstance(study, dict) and isinstance(study.get("trial"), int):
            watch(run, self.metric, study["trial"])


def watch(run: Any, metric: str, trial: int) -> None:
    """Make ``run.log_scalar`` ask the driver, after each point of ``metric``, whether to prune.

    The question waits for its answer (a few milliseconds): a pruned trial stops at the
    point that condemned it, as with Optuna's ``trial.should_prune()``.
    """
    from expkit_plugins.workers import ask_driver

    log_scalar = run.log_scalar
    next_step = 0

    def pruning_log_scalar(
        metric_name: str, value: Any, step: int | None = None, *, total: int | None = None
    ) -> None:
        nonlocal next_step
        log_scalar(metric_name, value, step, total=total)
        if metric_name != metric:
            return
        # The step the run gave the point: its own counter when none is given.
        step = next_step if step is None else step
        next_step = step + 1
        if ask_driver(("report", trial, step, float(value))):
            raise TrialPruned(f"trial {trial} pruned at step {step} of {metric}")

    run.log_scalar = pruning_log_scalar
