"""``expkit ui``: a web view of the runs in every store that has a reader.

This module only adds the command and its options: the server and its libraries (the
extra ``expkit[ui]``) are imported when ``expkit ui`` runs, never by other commands.
"""

from __future__ import annotations

import importlib
from typing import Any

from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl

DEFAULT_PORT = 8731
# What the server needs beyond the core: the `ui` extra in pyproject.toml.
REQUIRED = ("starlette", "uvicorn", "jinja2", "pygments")


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "ui",
        "ui",
        "serve a web view of the runs in the stores",
        ("stores", "ui_host", "ui_port", "ui_open", "ui_allow_delete", "plugins"),
        "ui",
    )
    group = parser.getgroup("ui", "the web view (expkit ui)")
    group.addoption(
        "--host",
        dest="ui_host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="ui: listen on ADDRESS (default 127.0.0.1; any other needs the printed token)",
    )
    group.addoption(
        "--port",
        dest="ui_port",
        type=int,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"ui: listen on port N (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    group.addoption("--open", dest="ui_open", action="store_true", help="ui: open a browser")
    group.addoption(
        "--allow-delete",
        dest="ui_allow_delete",
        action="store_true",
        help="ui: let the pages delete runs (after a confirmation)",
    )


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "ui":
        return None
    missing = [name for name in REQUIRED if not _importable(name)]
    if missing:
        raise UsageError(
            f"expkit ui needs the extra 'ui' ({', '.join(missing)} missing): "
            "pip install 'expkit[ui]'"
        )
    from expkit_plugins.ui.server import serve

    return serve(config)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
