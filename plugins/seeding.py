"""Seeding: a ``seed`` for every run, the global generators seeded, ``_seed``/``_rnd``.

The root seed is drawn from the operating system, never from the generators this
plugin seeds, so two runs in one process get different seeds. Every captured
function gets its own stream, derived from the root seed and the function's
name: the same seed gives the same numbers, and adding calls in one function
does not change what another receives.
"""

from __future__ import annotations

import hashlib
import random
import sys
from typing import Any

from expkit.pluginmanager import hookimpl
from expkit.records import ConfigDefault
from expkit.settings import SETTINGS

SEED_DOC = "the random seed for this experiment"
_MAX_SEED = 10**9
_MAX_GLOBAL_SEED = 2**32 - 1  # the largest seed numpy.random.seed takes
_SYSTEM_RANDOM = random.SystemRandom()  # os.urandom: no seeded generator affects it


def new_seed() -> int:
    """A fresh seed in [1, 1e9], independent of every seeded generator."""
    return _SYSTEM_RANDOM.randrange(_MAX_SEED) + 1


def derive_seed(seed: int, name: str) -> int:
    """A seed for ``name`` that depends only on the root ``seed`` and the name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _MAX_SEED + 1


def make_rnd(seed: int) -> Any:
    """A random generator seeded with ``seed``: numpy's when numpy is installed.

    A ``numpy.random.Generator``, or a ``RandomState`` when
    ``SETTINGS.CONFIG.NUMPY_RANDOM_LEGACY_API`` is true (code written for it calls
    ``randint`` or ``rand``, which a Generator lacks).
    """
    try:
        import numpy
    except ImportError:
        return random.Random(seed)
    if SETTINGS.CONFIG.NUMPY_RANDOM_LEGACY_API:
        return numpy.random.RandomState(seed)
    return numpy.random.default_rng(seed)


class FunctionSeeder:
    """Gives one captured function a new seed on every call, from its own stream."""

    def __init__(self, seed: int) -> None:
        self._stream = random.Random(seed)

    def seed(self) -> int:
        """The next seed of this function's stream."""
        return self._stream.randint(1, _MAX_SEED)

    def rnd(self, seed: int) -> Any:
        """A generator seeded with ``seed``."""
        return make_rnd(seed)


def _seed_numpy(seed: int) -> None:
    sys.modules["numpy"].random.seed(seed)


def _seed_torch(seed: int) -> None:
    torch = sys.modules["torch"]
    torch.manual_seed(seed)
    if hasattr(torch, "cuda") and torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class _SeedOnImport:
    """Seeds numpy's global generator when numpy is first imported during a run.

    Importing numpy up front would cost every run its import time; seeding it on
    import keeps ``numpy.random`` reproducible for code that imports it late.
    A meta path finder and its loader need only their methods; the ``importlib.abc``
    base classes would cost every start-up a millisecond of imports.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "numpy":
            return None
        sys.meta_path.remove(self)
        try:
            from importlib.util import find_spec

            spec = find_spec("numpy")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        loader, seed = spec.loader, self.seed

        class _Loader:
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                module.random.seed(seed)

        spec.loader = _Loader()
        return spec


def seed_globals(seed: int) -> None:
    """Seed ``random``, numpy (now or when imported) and torch (when imported)."""
    random.seed(seed)
    _forget_import_seeding()
    if "numpy" in sys.modules:
        _seed_numpy(seed)
    else:
        sys.meta_path.insert(0, _SeedOnImport(seed))
    if "torch" in sys.modules:
        _seed_torch(seed)


@hookimpl
def expkit_config_defaults(experiment: Any) -> list[ConfigDefault]:
    return [ConfigDefault("seed", new_seed(), SEED_DOC)]


@hookimpl
def expkit_run_setup(run: Any) -> None:
    seed = run.config.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        from expkit.errors import ConfigError

        raise ConfigError(f"the config entry 'seed' must be an integer, not {seed!r}")
    if not 0 <= seed <= _MAX_GLOBAL_SEED:
        from expkit.errors import ConfigError

        # numpy's global generator takes no other seed: refused before the run, with or
        # without numpy, so a seed that works here works everywhere.
        raise ConfigError(
            f"the config entry 'seed' must be between 0 and {_MAX_GLOBAL_SEED} (2**32 - 1), "
            f"not {seed}"
        )
    seed_globals(seed)


@hookimpl
def expkit_run_completed(run: Any) -> None:
    _forget_import_seeding()


@hookimpl
def expkit_run_failed(run: Any) -> None:
    _forget_import_seeding()


@hookimpl
def expkit_run_interrupted(run: Any) -> None:
    _forget_import_seeding()


def _forget_import_seeding() -> None:
    for finder in [f for f in sys.meta_path if isinstance(f, _SeedOnImport)]:
        sys.meta_path.remove(finder)


def seed_name(function: Any) -> str:
    """``fn`` or ``ingredient.fn``: what a captured function's seeds derive from.

    The experiment's own name is left out: a module experiment is named by its node id,
    which holds the file's path, and a re-run must draw the same numbers wherever it runs.
    """
    ingredient = function.ingredient
    if ingredient is None or ingredient.is_experiment:
        return function.fn.__qualname__
    return f"{ingredient.path}.{function.fn.__qualname__}"


@hookimpl
def expkit_function_seeder(run: Any, function: Any) -> FunctionSeeder:
    return FunctionSeeder(derive_seed(run.config["seed"], seed_name(function)))
