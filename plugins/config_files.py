"""Config files as a config source: ``.json``, ``.toml`` and ``.yaml``/``.yml``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from expkit.errors import ConfigError
from expkit.pluginmanager import hookimpl


def _load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_toml(path: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def _load_yaml(path: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"cannot read {path}: YAML config files need PyYAML (pip install expkit[yaml])"
        ) from None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


_LOADERS = {".json": _load_json, ".toml": _load_toml, ".yaml": _load_yaml, ".yml": _load_yaml}


@hookimpl(trylast=True)
def expkit_load_config_file(path: str) -> Any:
    loader = _LOADERS.get(os.path.splitext(path)[1].lower())
    if loader is None:
        return None
    try:
        return loader(path)
    except ConfigError:
        raise
    except Exception as exc:
        # One line naming the file; the parser's message says where in it.
        raise ConfigError(f"cannot read config file {path}: {' '.join(str(exc).split())}") from None
