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
``meta["synced_from"]`` (its run's store, named one way however it is typed, and id),
so a second sync skips it, unless the run went on since: then the copy is replaced.
A run is copied whole or not at all: all of it is read before ``DST`` hears of it, and
a copy ``DST`` refuses part-way is deleted again.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import attrs

from expkit.delivery import SpooledRun, Undeliverable, reader_or_none, replay
from expkit.errors import ExpkitError, UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord
from expkit.run import store_for_url
from expkit.serialize import utcnow
from expkit.store import FINAL_STATUSES, NotKeptError, backends, store_identity
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
        _refuse_same_store(src_url, dst_url)
        close(store_for_url(pm, dst_url))
        return _copy_listed(pm, reader, summaries, src_url, dst_url)
    finally:
        close(reader)


def copy_store(pm: Any, src_url: str, dst_url: str) -> int:
    """Copy every run of ``src_url`` into ``dst_url`` unless it is there; print the ids."""
    _refuse_same_store(src_url, dst_url)
    close(store_for_url(pm, dst_url))  # a URL nobody stores to fails before anything is read
    reader = reader_for(pm, src_url)
    try:
        return _copy_listed(pm, reader, list(reader.list_runs()), src_url, dst_url)
    finally:
        close(reader)


def _refuse_same_store(src_url: str, dst_url: str) -> None:
    # A store copied into itself would hold each of its runs twice.
    same = store_identity(src_url)
    if store_identity(dst_url) == same:
        raise UsageError(
            f"{printable(redact_url(src_url))} and {printable(redact_url(dst_url))} are the "
            f"same store ({printable(same)}): give another store to copy its runs into"
        )


def _copy_listed(
    pm: Any, reader: Any, summaries: list[RunRecord], src_url: str, dst_url: str
) -> int:
    try:
        existing = _all_runs(pm, dst_url)
    except UsageError:
        existing = []  # a store yet to be made (its folder does not exist)
    return _copy_runs(pm, reader, summaries, existing, src_url, dst_url)


def _all_runs(pm: Any, url: str) -> list[RunRecord]:
    reader = reader_for(pm, url)
    try:
        return list(reader.list_runs())
    finally:
        close(reader)


@attrs.frozen
class _Found:
    """A destination run that a source run is, or was copied into."""

    run_id: Any
    started: Any  # its start, to the second
    state: RunRecord  # the run as the destination holds it (or as it was copied)
    is_copy: bool  # False: the destination run is the source run's original


def _copy_runs(
    pm: Any,
    reader: Any,
    summaries: list[RunRecord],
    existing: list[RunRecord],
    src_url: str,
    dst_url: str,
) -> int:
    src, dst = store_identity(src_url), store_identity(dst_url)
    taken = {str(r.id) for r in existing}
    # Whether the destination numbers its runs (file, MongoDB, SQL, S3) or names them
    # otherwise (TinyDB's uuids): told by its runs, else by its kind, else by the id it
    # gives the first copy.
    numbered = _numbered(existing[0].id) if existing else _numbers_runs(pm, dst_url)
    # Every run a destination run is a copy of, through earlier syncs, and the run itself.
    there: dict[tuple[str, str], list[_Found]] = {}
    for run in existing:
        own, *origins = _identities(dst, run)
        _remember(there, [own], run, run.id, is_copy=False)
        _remember(there, origins, run, run.id, is_copy=True)
    copied = updated = skipped = failed = 0
    for summary in summaries:
        keys = _identities(src, summary)
        found = _copy_of(summary, keys, there)
        # An original is never replaced by a copy of it, even one that ran on further.
        if found is not None and not (found.is_copy and _ahead(summary, found.state)):
            print(f"{summary.id} -> {found.run_id} (already there)")
            skipped += 1
            continue
        if found is not None:
            keep = found.run_id  # its copy is replaced under the same id
        else:
            fits = numbered is not None and _numbered(summary.id) == numbered
            keep = summary.id if fits and str(summary.id) not in taken else None
        origin = {"store": src, "id": summary.id}
        if isinstance(summary.meta.get("synced_from"), dict):
            origin["synced_from"] = summary.meta["synced_from"]
        new_id = _copy_run(pm, reader, summary, dst_url, keep, origin, found)
        if new_id is None:
            failed += 1
            continue
        if numbered is None:
            numbered = _numbered(new_id)
        taken.add(str(new_id))
        _remember(there, keys, summary, new_id, is_copy=True)
        if found is None:
            copied += 1
            print(f"{summary.id} -> {new_id}")
        else:
            updated += 1
            print(f"{summary.id} -> {new_id} (updated: {_news(summary, found.state)})")
    done = [f"{copied} copied"] + [f"{updated} updated"] * bool(updated)
    done.append(f"{skipped} already in {redact_url(dst_url)}")
    if failed:
        done.append(f"{failed} not copied")
    print(", ".join(done))
    return ExitCode.RUNS_FAILED if failed else ExitCode.OK


# The kinds of store that number their runs, as Sacred's do; TinyDB names them by uuids.
_NUMBERING = {"file": True, "mongodb": True, "sql": True, "s3": True, "tinydb": False}


def _numbers_runs(pm: Any, url: str) -> bool | None:
    """Whether the store at ``url`` numbers its runs; ``None``: a kind of store not known here."""
    backend = next((b for b in backends(pm) if b.claims(url)), None)
    return None if backend is None else _NUMBERING.get(backend.name)


def _numbered(run_id: Any) -> bool:
    """Whether ``run_id`` is a run number (``7`` or ``"7"``) rather than a name or uuid."""
    return isinstance(run_id, int) or (isinstance(run_id, str) and run_id.isdigit())


def _remember(
    there: dict, keys: list[tuple[str, str]], state: RunRecord, copy_id: Any, is_copy: bool
) -> None:
    found = _Found(copy_id, _start_second(state), state, is_copy)
    for key in keys:
        there.setdefault(key, []).append(found)


def _copy_of(record: RunRecord, keys: list[tuple[str, str]], there: dict) -> _Found | None:
    """The destination's copy of ``record`` (or its original); ``None`` when it has none.

    A copy keeps its run's start time. A store that numbers runs may give a deleted run's
    id to a new one, so the same store and id are the same run only if the two started in
    the same second (or one has not started).
    """
    start = _start_second(record)
    for key in keys:
        for found in there.get(key, ()):
            if found.started is None or start is None or found.started == start:
                return found
    return None


def _start_second(record: RunRecord) -> Any:
    # Seconds: MongoDB keeps milliseconds, the other stores microseconds.
    return None if record.start_time is None else record.start_time.replace(microsecond=0)


def _identities(store: str, record: RunRecord) -> list[tuple[str, str]]:
    """The run as ``(store, id)`` (``store``: its store's identity), then each run it was
    synced from, nearest first."""
    keys = [(store, str(record.id))]
    origin = record.meta.get("synced_from")
    while isinstance(origin, dict) and len(keys) < 100:
        # Copies of before named their store as it was typed: the same name for it now.
        keys.append((store_identity(str(origin.get("store"))), str(origin.get("id"))))
        origin = origin.get("synced_from")
    return keys


def _ahead(run: RunRecord, copy: RunRecord) -> bool:
    """Whether ``run`` went on since ``copy`` was made of it, or the copy was cut short:
    it is further along (queued, running, ended), or beat or ended later."""
    return (
        _stage(run.status) > _stage(copy.status)
        or _later(run.heartbeat, copy.heartbeat)
        or _later(run.stop_time, copy.stop_time)
    )


def _stage(status: str) -> int:
    return 2 if status in FINAL_STATUSES else 0 if status == "QUEUED" else 1


def _later(time: Any, than: Any) -> bool:
    # In milliseconds, as MongoDB keeps them (it cuts the rest off).
    if time is None:
        return False
    return than is None or time.replace(microsecond=time.microsecond // 1000 * 1000) > than


def _news(run: RunRecord, copy: RunRecord) -> str:
    if run.status != copy.status:
        return f"it was {copy.status} when copied, it is {run.status} now"
    return "it ran on since it was copied"


def _copy_run(
    pm: Any,
    reader: Any,
    summary: RunRecord,
    dst_url: str,
    run_id: Any,
    origin: dict,
    old: _Found | None,
) -> Any:
    """Copy one run whole into ``dst_url``, in place of its copy ``old`` if given; its id
    there, or ``None`` when it is not there (said in one line: the next sync tries again)."""
    name, dst = printable(summary.id), redact_url(dst_url)
    with tempfile.TemporaryDirectory(prefix="expkit-sync-") as tmp:
        # Everything the copy needs is read before the destination hears of the run, so
        # that a run the source cannot give whole leaves nothing there.
        try:
            record = reader.get_run(summary.id)
            files = fetch_files(reader, record, Path(tmp))
        except Exception as exc:
            print(f"not copied: run {name}: {_reason(exc)}")
            return None
        for kind, file, _md5 in files.not_kept:
            why = " (Sacred's MongoObserver does not upload resources)" * (kind == "resource")
            print(
                f"run {name}: its {kind} {printable(file)} was recorded, its content never "
                f"stored{why}: copied without it, listed in the copy's meta.synced_from.not_kept"
            )
        if files.not_kept:
            origin = {**origin, "not_kept": [list(f) for f in files.not_kept]}
        removed = ""
        if old is not None:
            problem = _delete(pm, dst_url, old.run_id)
            if problem:
                print(f"not updated: run {name}: its copy {old.run_id} in {dst}: {problem}")
                return None
            removed = f"; its old copy {old.run_id} was removed"
        new_id = None
        try:
            store = store_for_url(pm, dst_url)
            try:
                meta = {"synced_from": origin}
                new_id = start_record(record, files, store, run_id=run_id, meta=meta)
                finish_record(record, files, store)
            finally:
                close(store)
        except BaseException as exc:
            # Never left half copied: a later sync would take the part for the run.
            if new_id is not None:
                left = _delete(pm, dst_url, new_id)
                removed += f"; the part written stays as run {new_id} ({left})" if left else ""
            if not isinstance(exc, Exception):
                raise
            print(f"not copied: run {name}: {dst} refused it: {_reason(exc)}{removed}")
            return None
    return new_id


def _delete(pm: Any, url: str, run_id: Any) -> str:
    """Delete run ``run_id`` of the store at ``url``; ``""``, or why it is still there."""
    try:
        reader = reader_for(pm, url)
        try:
            if "delete" not in getattr(reader, "capabilities", ()):
                return "the store cannot delete runs (delete it by hand)"
            reader.delete_run(run_id)
        finally:
            close(reader)
    except Exception as exc:
        return f"it cannot be deleted: {_reason(exc)}"
    return ""


def _reason(exc: BaseException) -> str:
    """An error in one line, its password hidden."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])  # str() of a KeyError quotes its message
    elif isinstance(exc, (ExpkitError, OSError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return printable(redact_url(" ".join(text.split()) or type(exc).__name__))


@attrs.frozen
class RunFiles:
    """What a copy of a run needs from its store, read before the copy begins."""

    ex_info: dict  # its base dir holds the sources
    artifacts: list[tuple[str, str]]  # (name, the file holding it)
    resources: list[tuple[str, str]]  # (original path, the file holding it)
    # (kind, name, md5) of each file the run recorded whose content was never stored.
    not_kept: list[tuple[str, str, str | None]]


def fetch_files(
    reader: Any, record: RunRecord, folder: Path, base_dir: str | None = None
) -> RunFiles:
    """Read the sources, artifacts and resources of ``record`` into ``folder``.

    The run keeps ``base_dir`` (default: its own) when the files there are the stored
    ones; else its base dir is ``folder/sources``, since a store takes the sources from
    the base dir. A file that cannot be read raises; one never stored is listed in
    ``not_kept``.
    """
    ex_info = _experiment_info(reader, record, folder / "sources", base_dir)
    artifacts, resources, not_kept = [], [], []
    for number, name in enumerate(record.artifacts):
        # A file under the artifact's own name: stores take the name from it.
        path = folder / "artifacts" / str(number) / (Path(name).name or "artifact")
        if _fetched(reader.read_artifact, record.id, name, path):
            artifacts.append((name, str(path)))
        else:
            not_kept.append(("artifact", name, None))
    for number, (original, md5) in enumerate(record.resources):
        path = folder / "resources" / str(number) / (Path(original).name or "resource")
        if _fetched(reader.read_resource, record.id, original, path):
            resources.append((original, str(path)))
        else:
            not_kept.append(("resource", original, md5 or None))
    return RunFiles(ex_info, artifacts, resources, not_kept)


def _fetched(read: Any, run_id: Any, name: str, path: Path) -> bool:
    """Write the stored file ``name`` to ``path``; False when it was never stored."""
    try:
        data = read(run_id, name)
    except NotKeptError:  # Sacred's MongoObserver records each resource, and uploads none
        return False
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return True


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
    from ``reader`` (see :func:`fetch_files`; a file never stored is left out).
    """
    with tempfile.TemporaryDirectory(prefix="expkit-sync-") as tmp:
        files = fetch_files(reader, record, Path(tmp), base_dir)
        new_id = start_record(record, files, store, run_id=run_id, meta=meta)
        finish_record(record, files, store)
    return new_id


def start_record(
    record: RunRecord, files: RunFiles, store: Any, *, run_id: Any = None, meta: dict | None = None
) -> Any:
    """Send ``store`` the event that starts (or queues) ``record``; the id it got."""
    common = {
        "ex_info": files.ex_info,
        "command": record.command or "",
        "host_info": dict(record.host),
        "config": record.config,
        "meta_info": {**record.meta, **(meta or {})},
        "_id": run_id,
    }
    start = record.start_time or utcnow()
    if record.status == "QUEUED":
        new_id = store.queued_event(queue_time=start, **common)
    else:
        new_id = store.started_event(start_time=start, **common)
    return run_id if new_id is None else new_id


def finish_record(record: RunRecord, files: RunFiles, store: Any) -> None:
    """Send ``store`` the rest of the started ``record``: metrics, files, output, its end."""
    if record.status == "QUEUED":
        return
    if record.metrics:
        metrics = {name: {"name": name, **m} for name, m in record.metrics.items()}
        store.log_metrics(metrics_by_name=metrics, info=dict(record.info))
    for name, path in files.artifacts:
        store.artifact_event(name=name, filename=path)
    copied = getattr(store, "copied_resource_event", None)
    for original, path in files.resources:
        if copied is None:
            store.resource_event(filename=path)
        else:
            copied(filename=path, original=original)
    start = record.start_time or utcnow()
    # A heartbeat only where the run had one, or output, info or a result to carry: a copy
    # holds what its run held (no beat, no result yet, for a run just started).
    beat = record.heartbeat
    if beat is not None or record.captured_out or record.info or record.result is not None:
        beat = beat or record.stop_time or start
        store.heartbeat_event(
            info=dict(record.info),
            captured_out=record.captured_out or "",
            beat_time=beat,
            result=record.result,
        )
    end = record.stop_time or beat or start
    if record.status == "COMPLETED":
        store.completed_event(stop_time=end, result=record.result)
    elif record.status == "FAILED":
        store.failed_event(fail_time=end, fail_trace=list(record.fail_trace or ()))
    elif record.status != "RUNNING":
        store.interrupted_event(interrupt_time=end, status=record.status)
    if hasattr(store, "join"):
        store.join()


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
