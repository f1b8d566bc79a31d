"""A store of five experiments with different configs, a few runs each, written by real runs.

Used by the tests of ``expkit runs`` and of :mod:`expkit.runs` on every kind of store.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from expkit import Experiment
from expkit.pluginmanager import get_plugin_manager
from expkit.run import store_for_url

LONG_PATH = "/data/datasets/classification/iris/iris_v2_cleaned_and_deduplicated.csv"

# name, default config, and the config updates of each run, in the order they run.
EXPERIMENTS: list[tuple[str, dict, list[dict]]] = [
    (
        "exp_svm.py::exp_svm",
        {"C": 1.0, "gamma": 0.7, "kernel": "rbf", "dataset": {"name": "iris", "path": LONG_PATH}},
        [{"C": 0.5}, {"C": 4.0, "kernel": "linear"}, {"C": 10.0, "gamma": 0.1}],
    ),
    (
        "exp_forest.py::exp_forest",
        {"n_estimators": 100, "max_depth": None, "criterion": "gini"},
        [{"n_estimators": 200}, {"max_depth": 8, "criterion": "entropy"}],
    ),
    (
        "exp_mlp.py::exp_mlp",
        {"layers": [64, 64], "lr": 0.001, "optimizer": {"name": "adam", "momentum": 0.9}},
        [{}, {"layers": [128, 128, 64], "lr": 0.01}],
    ),
    ("exp_knn.py::exp_knn", {"k": 5, "weights": "uniform"}, [{"k": 3}, {"k": 15}]),
    (
        "exp_logreg.py::exp_logreg",
        {"C": 1.0, "penalty": "l2"},
        [{}, {"penalty": "l1"}, {"C": 100.0}],
    ),
]


def exp_svm(C, gamma, _run):
    for step in range(20):
        _run.log_scalar("loss", 1.0 / (C * (step + 1)))
    return round(0.9 + 0.01 * min(C, 7.0), 4)


def exp_forest(n_estimators, max_depth, _run):
    for step in range(10):
        _run.log_scalar("oob_error", 0.3 / (step + 1))
    _run.info["best"] = {"depth": max_depth or 12, "score": 0.93}
    return {"accuracy": 0.93 + n_estimators / 100000, "f1": 0.91}


def exp_mlp(layers, lr, _run):
    for epoch in range(5):
        _run.log_scalar("loss", 2.0 / (epoch + 1) * (1 + lr))
    return 0.5 + len(layers) / 10


def exp_knn(k):
    return f"accuracy={0.9 + k / 1000:.3f}"


def exp_logreg(C, penalty):
    if penalty == "l1":
        raise ValueError("lbfgs supports only l2 penalties")
    return 0.95 + C / 1000


MAINS = {
    "exp_svm.py::exp_svm": exp_svm,
    "exp_forest.py::exp_forest": exp_forest,
    "exp_mlp.py::exp_mlp": exp_mlp,
    "exp_knn.py::exp_knn": exp_knn,
    "exp_logreg.py::exp_logreg": exp_logreg,
}


def record_mixed(url: str, artifact_dir: Path | None = None) -> None:
    """Run every experiment of :data:`EXPERIMENTS` into the store at ``url`` (12 runs).

    With ``artifact_dir``, the first svm run also keeps an artifact ``model.bin``.
    """
    pm = get_plugin_manager()
    for name, defaults, updates in EXPERIMENTS:
        for number, update in enumerate(updates):
            ex = Experiment(name)
            ex.add_config(**defaults)
            main = MAINS[name]
            if artifact_dir is not None and name.startswith("exp_svm") and number == 0:
                main = _with_artifact(main, artifact_dir)
            ex.main(main)
            store = store_for_url(pm, url)
            ex.observers.append(store)
            try:
                with contextlib.suppress(ValueError):  # the l1 logreg run fails
                    ex.run(config_updates=update, options={"--capture": "sys"})
            finally:
                if callable(getattr(store, "close", None)):
                    store.close()


def _with_artifact(main: Any, folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.bin"
    model.write_bytes(bytes(range(256)))

    def exp_svm(C, gamma, _run):
        _run.add_artifact(str(model), name="model.bin")
        return main(C, gamma, _run)

    return exp_svm
