"""``expkit sync SRC DST``: deliver spooled runs (events a failing store missed) to a store.

``SRC`` is a spool folder: ``.expkit/spool`` (every store's), or one store's
folder inside it. Each spooled run is replayed in order and removed once the
store took all of it; a run the store still refuses stays spooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expkit.delivery import SpooledRun, replay
from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.run import store_for_url
from expkit.utils import redact_url


def spooled_runs(folder: Path) -> list[SpooledRun]:
    """Every spooled run below ``folder``, oldest first."""
    if (folder / "meta.json").is_file():
        return [SpooledRun(folder)]
    return [SpooledRun(meta.parent) for meta in sorted(folder.glob("*/meta.json"))] + [
        SpooledRun(meta.parent) for meta in sorted(folder.glob("*/*/meta.json"))
    ]


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "sync":
        return None
    args = list(config.option.paths or ())
    if len(args) != 2:
        raise UsageError("expkit sync takes two arguments: expkit sync SPOOL_FOLDER STORE_URL")
    source, url = Path(args[0]), args[1]
    if not source.is_dir():
        raise UsageError(f"no spool folder {source}")
    runs = spooled_runs(source)
    if not runs:
        print(f"nothing spooled in {source}")
        return ExitCode.OK
    delivered = failed = 0
    for spooled in runs:
        store = store_for_url(config.pluginmanager, url)
        try:
            run_id = replay(spooled, store)
        except Exception as exc:
            failed += 1
            print(f"not delivered: {spooled.folder.name}: {redact_url(str(exc))}")
        else:
            delivered += 1
            print(f"delivered {spooled.folder.name} to {redact_url(url)} as run {run_id}")
    print(f"{delivered} delivered, {failed} still spooled")
    return ExitCode.OK if not failed else ExitCode.RUNS_FAILED
