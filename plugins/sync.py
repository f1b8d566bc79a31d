"""``expkit sync SRC DST``: deliver spooled runs to a store, or copy runs between stores.

``SRC`` is a spool folder (events a failing store missed): ``.expkit/spool`` (every
store's), or one store's folder inside it, or one run's. Each spooled run is replayed
in order and removed once the store took all of it; a run the store still refuses stays
spooled. A run the store holds already is resumed; else it is sent whole, from its start,
into any store. A run marked undeliverable (a store refused its data) is listed, and
tried again only when ``SRC`` names its own folder.

Or ``SRC`` is a store: every run its reader returns is sent to ``DST`` as the
observer events that made it, with its own times, keeping its id where ``DST`` has
it free and it fits the ids ``DST`` gives (numbers for file and MongoDB stores,
uuids for TinyDB); otherwise ``DST`` gives it one. Each copy records
``meta["synced_from"]``, so a second sync skips it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from expkit.delivery import SpooledRun, Undeliverable, reader_or_none, replay
from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord
from expkit.run import store_for_url
from expkit.serialize import utcnow
from expkit.utils import printable, redact_url
from expkit_plugins.runs import close, read_sources, reader_for


def spooled_runs(folder: Path) -> list[SpooledRun]:
    """Every spooled run below ``folder``, oldest first."""
    if (folder / "meta.json").is_file():
        return [SpooledRun(folder)]
    return [SpooledRun(meta.parent) for meta in sorted(folder.glob("*/meta.json"))] + [
        SpooledRun(meta.parent) for meta in sorted(folder.glob("*/*/meta.json"))
    ]


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "sync", "sync SRC DST", "deliver spooled runs, or copy runs between stores", ("plugins",)
    )


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "sync":
        return None
    args = list(config.option.paths or ())
    if len(args) != 2:
        raise UsageError("expkit sync takes two arguments: expkit sync SPOOL_FOLDER STORE_URL")
    source, url = Path(args[0]), args[1]
    if "://" in args[0]:
        return copy_store(config.pluginmanager, args[0], url)
    if not source.is_dir():
        raise UsageError(f"no spool folder {source}")
    runs = spooled_runs(source)
    if not runs:
        copied = _copy_if_store(config.pluginmanager, args[0], url)
        if copied is not None:
            return copied
        print(f"nothing spooled in {source}")
        return ExitCode.OK
    pm = config.pluginmanager
    named = len(runs) == 1 and runs[0].folder == source
    delivered = failed = 0
    # To tell whether a run the store had is still there, or another one took its id.
    reader = reader_or_none(lambda: reader_for(pm, url))
    try:
        for spooled in runs:
            ok = _deliver(pm, spooled, url, reader, retry=named)
            delivered, failed = delivered + ok, failed + (not ok)
    finally:
        close(reader)
    print(f"{delivered} delivered, {failed} still spooled")
    return ExitCode.OK if not failed else ExitCode.RUNS_FAILED


def _deliver(pm: Any, spooled: SpooledRun, url: str, reader: Any, retry: bool) -> bool:
    """Replay one spooled run into the store at ``url``, print what happened; True if done."""
    name = spooled.folder.name
    try:
        failed = spooled.failed
    except (OSError, ValueError) as exc:
        print(f"not delivered: {name}: its meta.json cannot be read ({exc})")
        return False
    if failed and not retry:
        print(
            f"undeliverable: {spooled.folder}: {printable(failed)}; "
            f"to try it again: expkit sync {spooled.folder} STORE"
        )
        return False
    store = store_for_url(pm, url)
    try:
        run_id = replay(spooled, store, url=url, reader=reader, recreate=True)
    except Undeliverable as exc:
        print(f"not delivered: {name}: {printable(exc)} (marked undeliverable)")
        return False
    except Exception as exc:
        print(f"not delivered: {name}: {printable(redact_url(str(exc)))}")
        return False
    finally:
        close(store)  # a store per run, as in a run; its connection goes with it
    print(f"delivered {name} to {redact_url(url)} as run {printable(run_id)}")
    return True


# --- store to store ----------------------------------------------------------------------------


def _copy_if_store(pm: Any, src_url: str, dst_url: str) -> int | None:
    """:func:`copy_store` for a folder that holds stored runs; ``None`` when it holds none."""
    try:
        reader = reader_for(pm, src_url)
    except UsageError:
        return None
    try:
        summaries = list(reader.list_runs())  # read once: each damaged run is said once
        if not summaries:
            return None
        close(store_for_url(pm, dst_url))
        return _copy_listed(pm, reader, summaries, dst_url)
    finally:
        close(reader)


def copy_store(pm: Any, src_url: str, dst_url: str) -> int:
    """Copy every run of ``src_url`` into ``dst_url`` unless it is there; print the ids."""
    close(store_for_url(pm, dst_url))  # a URL nobody stores to fails before anything is read
    reader = reader_for(pm, src_url)
    try:
        return _copy_listed(pm, reader, list(reader.list_runs()), dst_url)
    finally:
        close(reader)


def _copy_listed(pm: Any, reader: Any, summaries: list[RunRecord], dst_url: str) -> int:
    try:
        existing = _all_runs(pm, dst_url)
    except UsageError:
        existing = []  # a store yet to be made (its folder does not exist)
    return _copy_runs(pm, reader, summaries, existing, dst_url)


def _all_runs(pm: Any, url: str) -> list[RunRecord]:
    reader = reader_for(pm, url)
    try:
        return list(reader.list_runs())
    finally:
        close(reader)


def _copy_runs(
    pm: Any, reader: Any, summaries: list[RunRecord], existing: list[RunRecord], dst_url: str
) -> int:
    taken = {str(r.id) for r in existing}
    # Whether the destination numbers its runs (file, MongoDB) or names them otherwise
    # (TinyDB's uuids): told by its runs, or else by the id it gives the first copy.
    numbered = _numbered(existing[0].id) if existing else None
    # Every run a destination run is a copy of, through earlier syncs, and the run itself.
    there: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for run in existing:
        _remember(there, run, run.id)
    copied = skipped = 0
    for summary in summaries:
        found = _copy_of(summary, there)
        if found is not None:
            print(f"{summary.id} -> {found} (already there)")
            skipped += 1
            continue
        store = store_for_url(pm, dst_url)
        fits = numbered is not None and _numbered(summary.id) == numbered
        keep = summary.id if fits and str(summary.id) not in taken else None
        origin = {"store": summary.store, "id": summary.id}
        if isinstance(summary.meta.get("synced_from"), dict):
            origin["synced_from"] = summary.meta["synced_from"]
        record = reader.get_run(summary.id)
        try:
            new_id = replay_record(reader, record, store, run_id=keep, meta={"synced_from": origin})
        finally:
            close(store)
        if numbered is None:
            numbered = _numbered(new_id)
        taken.add(str(new_id))
        _remember(there, summary, new_id)
        copied += 1
        print(f"{summary.id} -> {new_id}")
    print(f"{copied} copied, {skipped} already in {redact_url(dst_url)}")
    return ExitCode.OK


def _numbered(run_id: Any) -> bool:
    """Whether ``run_id`` is a run number (``7`` or ``"7"``) rather than a name or uuid."""
    return isinstance(run_id, int) or (isinstance(run_id, str) and run_id.isdigit())


def _remember(there: dict, record: RunRecord, copy_id: Any) -> None:
    for key in _identities(record):
        there.setdefault(key, []).append((_start_second(record), copy_id))


def _copy_of(record: RunRecord, there: dict) -> Any:
    """The id of the destination's copy of ``record``; ``None`` when it has none.

    A copy keeps its run's start time. A store that numbers runs may give a deleted run's
    id to a new one, so the same store and id are the same run only if the two started in
    the same second (or one has not started).
    """
    start = _start_second(record)
    for key in _identities(record):
        for started, copy_id in there.get(key, ()):
            if started is None or start is None or started == start:
                return copy_id
    return None


def _start_second(record: RunRecord) -> Any:
    # Seconds: MongoDB keeps milliseconds, the other stores microseconds.
    return None if record.start_time is None else record.start_time.replace(microsecond=0)


def _identities(record: RunRecord) -> list[tuple[str, str]]:
    """The run as ``(store, id)``, then each run it was synced from, nearest first."""
    keys = [(record.store, str(record.id))]
    origin = record.meta.get("synced_from")
    while isinstance(origin, dict) and len(keys) < 100:
        keys.append((str(origin.get("store")), str(origin.get("id"))))
        origin = origin.get("synced_from")
    return keys


def replay_record(
    reader: Any,
    record: RunRecord,
    store: Any,
    *,
    run_id: Any = None,
    meta: dict | None = None,
    base_dir: str | None = None,
) -> Any:
    """Send ``store`` the events that recorded ``record``, with its own times; the new id.

    ``meta`` adds entries to the run's meta. The sources, artifacts and resources come
    from ``reader``. The run keeps ``base_dir`` (default: its own) when the files there are
    the stored ones; else its base dir is a temporary folder holding them, since a
    store takes the sources from the base dir.
    """
    with tempfile.TemporaryDirectory(prefix="expkit-sync-") as tmp:
        ex_info = _experiment_info(reader, record, Path(tmp) / "sources", base_dir)
        start = record.start_time or utcnow()
        common = {
            "ex_info": ex_info,
            "command": record.command or "",
            "host_info": dict(record.host),
            "config": record.config,
            "meta_info": {**record.meta, **(meta or {})},
            "_id": run_id,
        }
        if record.status == "QUEUED":
            new_id = store.queued_event(queue_time=start, **common)
            return run_id if new_id is None else new_id
        new_id = store.started_event(start_time=start, **common)
        new_id = run_id if new_id is None else new_id
        if record.metrics:
            metrics = {name: {"name": name, **m} for name, m in record.metrics.items()}
            store.log_metrics(metrics_by_name=metrics, info=dict(record.info))
        for number, name in enumerate(record.artifacts):
            path = Path(tmp, "artifacts", str(number), Path(name).name or "artifact")
            path.parent.mkdir(parents=True)
            path.write_bytes(reader.read_artifact(record.id, name))
            store.artifact_event(name=name, filename=str(path))
        copied = getattr(store, "copied_resource_event", None)
        for number, (original, _md5sum) in enumerate(record.resources):
            # Stores take a resource from a file: one under the original's name, here.
            path = Path(tmp, "resources", str(number), Path(original).name or "resource")
            path.parent.mkdir(parents=True)
            path.write_bytes(reader.read_resource(record.id, original))
            if copied is None:
                store.resource_event(filename=str(path))
            else:
                copied(filename=str(path), original=original)
        beat = record.heartbeat or record.stop_time or start
        store.heartbeat_event(
            info=dict(record.info),
            captured_out=record.captured_out or "",
            beat_time=beat,
            result=record.result,
        )
        end = record.stop_time or beat
        if record.status == "COMPLETED":
            store.completed_event(stop_time=end, result=record.result)
        elif record.status == "FAILED":
            store.failed_event(fail_time=end, fail_trace=list(record.fail_trace or ()))
        elif record.status != "RUNNING":
            store.interrupted_event(interrupt_time=end, status=record.status)
        if hasattr(store, "join"):
            store.join()
    return new_id


def _experiment_info(reader: Any, record: RunRecord, folder: Path, base_dir: str | None) -> dict:
    info = dict(record.experiment_info)
    base = base_dir or info.get("base_dir") or ""
    stored = read_sources(reader, record)
    unchanged = bool(base) and all(
        Path(base, name).is_file() and Path(base, name).read_bytes() == data
        for name, data in stored.items()
    )
    if not unchanged:
        for name, data in stored.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        base = str(folder)
    info["base_dir"] = base
    info["sources"] = [[name, _md5(data)] for name, data in stored.items()]
    return info


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
