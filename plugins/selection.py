"""``-k EXPR``: select experiments by substring expressions over their node ids, as pytest does."""

from __future__ import annotations

from typing import Any

from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.getgroup("running").addoption(
        "-k",
        dest="keyword",
        default="",
        metavar="EXPR",
        help="only experiments whose names match EXPR, e.g. -k 'svm and not linear'",
    )


@hookimpl
def expkit_collection_modifyitems(config: Any, items: list) -> None:
    text = getattr(config.option, "keyword", "")
    if not text or not text.strip():
        return
    # Imported only when -k is given.
    from expkit.keywords import compile_keyword_expression

    expression = compile_keyword_expression(text)
    items[:] = [item for item in items if expression.matches(item.keywords)]
