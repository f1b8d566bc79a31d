"""``expkit rerun ID``: run a stored run again from its stored sources, and compare.

The run's sources are restored into a fresh temporary folder, the experiment runs
there in a child process with the stored config (seed included) plus the ``-o``
overrides, into a temporary store; the new run is then copied into the original
store with ``meta["rerun_of"]`` (and ``meta["derived_from"]`` when overridden).
The report says whether result and metrics are identical, or what differs, and
what drifted since the original: sources, packages, Python, host and git.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from expkit.captured import SPECIAL_NAMES
from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord
from expkit.run import store_for_url
from expkit.serialize import to_data
from expkit.store import StoreError
from expkit.utils import is_under, redact_url, suggest
from expkit_plugins.runs import (
    close,
    dependencies,
    fetch,
    flatten,
    read_sources,
    reader_for,
    source_diff,
    source_names,
    store_url,
)
from expkit_plugins.session import parse_overrides
from expkit_plugins.sources import repository_of
from expkit_plugins.sync import replay_record

_MD5_FIELD = re.compile(r"([0-9a-f]{32})")
_MD5_IN_NAME = re.compile(r"_([0-9a-f]{32})(?:\.[^./\\]*)?$")


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "rerun",
        "rerun ID",
        "run a stored run again from its sources, and compare",
        ("overrides", "check", "stores", "plugins"),
        "rerun",
    )
    group = parser.getgroup("rerun", "re-running a stored run (expkit rerun ID)")
    group.addoption(
        "--check", action="store_true", help="rerun: exit 1 when the result is not the same"
    )


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "rerun":
        return None
    args = list(config.getoption("paths") or ())
    if len(args) != 1:
        raise UsageError("expkit rerun takes one run id: expkit rerun ID [-o KEY=VALUE ...]")
    url = store_url(config)
    pm = config.pluginmanager
    reader = reader_for(pm, url)
    try:
        return _rerun(config, reader, url, args[0])
    finally:
        close(reader)


def _rerun(config: Any, reader: Any, url: str, run_id: str) -> int:
    # subprocess and tempfile are imported where used: every `python exp.py` loads this plugin.
    import subprocess
    import tempfile

    pm = config.pluginmanager
    original = fetch(reader, url, run_id)
    overrides = parse_overrides(list(config.getoption("overrides") or ()))
    entries, named = _entries(original, overrides)
    sources = read_sources(reader, original)  # once: restored now, compared at the end
    tampered = tampered_sources(original, sources)
    if tampered and not config.getoption("force"):
        name, actual, recorded = tampered[0]
        raise UsageError(
            f"run {original.id}: source {name!r} as stored in {redact_url(url)} has md5 "
            f"{actual}, not the {recorded} the run recorded: the stored copy was changed after "
            "the run; re-run it anyway with --force"
        )
    with tempfile.TemporaryDirectory(prefix="expkit-rerun-") as tmp:
        workdir = Path(tmp, "code")
        _restore_sources(sources, workdir)
        _restore_resources(reader, original, workdir)
        if not (workdir / "pyproject.toml").exists():
            # The project root, where expconf.py files are looked for from, is the base dir.
            (workdir / "pyproject.toml").write_text("[tool.expkit]\n")
        scratch = Path(tmp, "store")
        named = [_restored_file(name, sources) for name in named]
        argv = rerun_command(original, entries, scratch, named)
        print(f"re-running run {original.id} of {original.experiment} in {workdir}")
        sys.stdout.flush()
        code = subprocess.call(argv, cwd=workdir)
        if not scratch.exists():
            print(f"the re-run stored no run (its command exited with {code})")
            return ExitCode.RUNS_FAILED
        scratch_reader = reader_for(pm, str(scratch))
        rerun = _as_named_by(
            original, scratch_reader.get_run(next(iter(scratch_reader.list_runs())).id)
        )
        if original.command and rerun.command != original.command:
            # ex.run("evaluate") from Python: `expkit run` runs the main command only.
            print(
                f"the re-run ran the command {rerun.command!r}, not the run's "
                f"{original.command!r}: run it again from Python, "
                f"ex.run({original.command!r}, config_updates=...); nothing was recorded"
            )
            return ExitCode.RUNS_FAILED
        link = {"store": original.store, "id": original.id}
        meta: dict[str, Any] = {"rerun_of": link}
        if overrides:
            meta["derived_from"] = {**link, "overrides": overrides}
        new_id = replay_record(
            scratch_reader,
            rerun,
            store_for_url(pm, url),
            meta=meta,
            base_dir=original.experiment_info.get("base_dir"),
        )
    # Compared as stored: a store may change what it records (MongoDB renames keys with
    # "." or "$"), so the original is compared with its re-run in the same store.
    rerun = reader.get_run(new_id)
    same_result = same(original.result, rerun.result)
    print(f"recorded the re-run as run {new_id} in {redact_url(url)} ({rerun.status})")
    print("\n".join(report_lines(original, rerun, new_id, sources)))
    if rerun.status != "COMPLETED":
        return ExitCode.RUNS_FAILED
    if config.getoption("check") and not same_result:
        return ExitCode.RUNS_FAILED
    return ExitCode.OK


def _as_named_by(original: RunRecord, rerun: RunRecord) -> RunRecord:
    """``rerun`` under ``original``'s experiment name, so that listings group the two.

    A module experiment is named by its node id, which holds the file's path from the
    project root; restored flat into a temporary folder it gets another one.
    """
    info = {**rerun.experiment_info, "name": original.experiment}
    return attrs.evolve(rerun, experiment=original.experiment, experiment_info=info)


def _entries(original: RunRecord, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entries and named configs to run ``original`` again with, ``overrides`` on top.

    Without overrides, every stored entry: the same config, even where a config scope
    computed something that would come out otherwise now (a time, a random draw). With
    overrides, what the run was given (its updates, named configs and seed) and the
    overrides, so that entries computed from an overridden one follow it, as with
    ``with n=5`` in Sacred.
    """
    flat = flatten(original.config)
    special = [k for k in flat if any(part in SPECIAL_NAMES for part in k.split("."))]
    if special:
        # Stored by expkit before it refused them (-o _seed=3 -f): the run's functions got
        # what expkit passes under that name, never the entry, which the rerun leaves out.
        print(f"left out of the re-run's config: {', '.join(special)} (names expkit fills in)")
        flat = {k: v for k, v in flat.items() if k not in special}
    for key in overrides:
        if not any(k == key or k.startswith(key + ".") for k in flat):
            raise UsageError(
                f"-o {key}: run {original.id} has no config entry {key!r}"
                + suggest(key, list(flat))
            )
    if not overrides:
        # An inf or NaN a config scope computed has no -o form (JSON has none): the
        # scope computes it again.
        return {k: v for k, v in flat.items() if _finite(v)}, []
    meta = original.meta or {}
    given = flatten(meta.get("config_updates") or {})
    if "seed" in flat:
        given["seed"] = flat["seed"]
    for key in overrides:
        for k in [k for k in given if k == key or k.startswith(key + ".")]:
            del given[k]
    given.update(overrides)
    return given, [str(name) for name in meta.get("named_configs") or ()]


def _restored_file(named: str, sources: dict[str, bytes]) -> str:
    """A named config that was a config file (``with ../proj/wide.yaml``) as the stored source
    it is, relative to the base dir the rerun runs in; any other name as it is."""
    if named in sources:
        return named
    given = os.path.normpath(named).replace("\\", "/")
    found = [s for s in sources if given.endswith("/" + s.replace("\\", "/"))]
    return max(found, key=len) if found else named


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_finite, value))
    return not isinstance(value, dict) or all(map(_finite, value.values()))


def recorded_md5(entry: Any) -> str | None:
    """The md5 a run recorded for one of its sources, or ``None`` when the store keeps none.

    Stores name a stored copy by its md5: a field of the entry (TinyDB, Sacred's
    ``[name, md5]``) or the copy's file name (the file store's ``_sources/<stem>_<md5>.py``).
    """
    for field in list(entry)[1:] if isinstance(entry, (list, tuple)) else ():
        if isinstance(field, str):
            found = _MD5_FIELD.fullmatch(field) or _MD5_IN_NAME.search(field)
            if found:
                return found.group(1)
    return None


def tampered_sources(record: RunRecord, sources: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """``(name, md5 of the stored copy, recorded md5)`` of each source changed in the store."""
    found = []
    for name, recorded in _recorded_md5s(record).items():
        actual = _md5(sources[name]) if name in sources else recorded
        if actual != recorded:
            found.append((name, actual, recorded))
    return found


def _recorded_md5s(record: RunRecord) -> dict[str, str]:
    found = {}
    for entry in record.experiment_info.get("sources") or ():
        md5 = recorded_md5(entry)
        if md5 is not None:
            found[str(entry[0])] = md5
    return found


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _restore_sources(sources: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in sources.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _restore_resources(reader: Any, record: RunRecord, folder: Path) -> None:
    """Put the input files the run read from within its base dir back where it read them.

    One read from elsewhere is read where it lies, if it still does.
    """
    base = record.experiment_info.get("base_dir")
    for name, _ in record.resources if base else ():
        if not is_under(os.path.normpath(name), os.path.normpath(base)):
            continue
        target = folder / os.path.relpath(os.path.normpath(name), base)
        if target.exists():
            continue  # a source by that name was restored already
        try:
            data = reader.read_resource(record.id, name)
        except (KeyError, StoreError):
            continue  # recorded, not kept: the re-run reports what differs
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def rerun_command(
    record: RunRecord, entries: dict[str, Any], store: Path, named: Sequence[str] = ()
) -> list[str]:
    """The command line that runs ``record``'s experiment again with ``entries``."""
    mainfile = record.experiment_info.get("mainfile")
    if not mainfile:
        raise UsageError(f"run {record.id} recorded no main file: it cannot be re-run")
    settings = [f"{key}={value!r}" for key, value in entries.items()]
    # -f: the stored config holds what named configs and -f added; -o alone would refuse it.
    if "::" in record.experiment or not _from_script_command_line(record):
        # Collected by `expkit run` (a module experiment's name is its node id), or run
        # from Python: the file need not run its own command line (automain).
        name = record.experiment.rsplit("::", 1)[-1]
        overrides = [arg for s in settings for arg in ("-o", s)]
        named_args = [arg for n in named for arg in ("-w", n)]
        return [
            sys.executable,
            "-m",
            "expkit",
            "run",
            f"{_main_source(record, mainfile)}::{name}",
            *named_args,
            *overrides,
            "-f",
            "--store",
            str(store),
        ]
    script = _main_source(record, mainfile)
    command = [sys.executable, script, *([record.command] if record.command else [])]
    return [*command, "with", *named, *settings, "-f", "-F", str(store)]


def _main_source(record: RunRecord, mainfile: str) -> str:
    """The main file's path among the restored sources: as recorded (relative to the base
    dir), or, for runs recorded with only its name, the one source of that name."""
    names = source_names(record)
    if mainfile in names:
        return mainfile
    found = [n for n in names if n.replace("\\", "/").rpartition("/")[2] == mainfile]
    return found[0] if len(found) == 1 else mainfile


def _from_script_command_line(record: RunRecord) -> bool:
    # A script's command line (expkit's or Sacred's) records the words after "with".
    options = (record.meta or {}).get("options")
    return isinstance(options, dict) and "UPDATE" in options


# --- the report --------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Whether two stored values are the same data (NaN equals NaN)."""
    return json.dumps(to_data(a), sort_keys=True) == json.dumps(to_data(b), sort_keys=True)


def report_lines(
    original: RunRecord, rerun: RunRecord, new_id: Any, sources: dict[str, bytes]
) -> list[str]:
    """What differs between the original run and its re-run, and what drifted since.

    ``sources`` are the original's stored sources (:func:`read_sources`).
    """
    old, new = f"run {original.id}", f"run {new_id}"
    if same(original.result, rerun.result):
        lines = [f"result: identical ({json.dumps(to_data(rerun.result))})"]
    else:
        lines = [
            f"result: differs: {json.dumps(to_data(original.result))} ({old}) "
            f"vs {json.dumps(to_data(rerun.result))} ({new})"
        ]
    lines += metric_lines(original.metrics or {}, rerun.metrics or {}, old, new)
    lines += _source_drift(original, sources)
    lines += _changes("packages", dependencies(original), dependencies(rerun))
    lines += _changes(
        "python",
        {"version": original.host.get("python_version")},
        {"version": rerun.host.get("python_version")},
    )
    host_keys = ("hostname", "os", "cpu", "gpus")
    lines += _changes(
        "host",
        {k: original.host.get(k) for k in host_keys},
        {k: rerun.host.get(k) for k in host_keys},
    )
    lines += _git_drift(original)
    return lines


def metric_lines(old: dict[str, dict], new: dict[str, dict], old_name: str, new_name: str) -> list:
    """``metrics: identical`` or, per metric, the first step where the two runs differ."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in new or name not in old:
            lines.append(f"metric {name}: only in {old_name if name in old else new_name}")
            continue
        step = first_difference(old[name], new[name])
        if step is not None:
            lines.append(f"metric {name}: {step}")
    return lines or [f"metrics: identical ({len(old)})"]


def first_difference(old: dict, new: dict) -> str | None:
    """Where two series of one metric first differ, said in words; ``None`` if nowhere."""
    a = list(zip(old.get("steps") or (), old.get("values") or ()))
    b = list(zip(new.get("steps") or (), new.get("values") or ()))
    for (step_a, value_a), (step_b, value_b) in zip(a, b):
        if step_a != step_b:
            return f"first differs at step {step_a}: logged at step {step_b} instead"
        if not _same_value(value_a, value_b):
            return f"first differs at step {step_a}: {value_a!r} vs {value_b!r}"
    if len(a) != len(b):
        longer = a if len(a) > len(b) else b
        return (
            f"first differs at step {longer[min(len(a), len(b))][0]}: {len(a)} vs {len(b)} values"
        )
    return None


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _source_drift(original: RunRecord, sources: dict[str, bytes]) -> list[str]:
    base = original.experiment_info.get("base_dir") or ""
    lines = [
        f"source {name}: the stored copy has md5 {actual}, not the recorded {recorded}; "
        "the re-run ran it (--force)"
        for name, actual, recorded in tampered_sources(original, sources)
    ]
    recorded = _recorded_md5s(original)
    drifted = []
    for name, stored in sources.items():
        path = Path(base, name)
        current = path.read_bytes() if path.is_file() else None
        # Against what the run recorded: a copy changed in the store must not blame the file.
        if current is None or _md5(current) != recorded.get(name, _md5(stored)):
            drifted += [
                f"source {name}: changed since run {original.id} (working copy {path})",
                *(
                    f"  {line}"
                    for line in source_diff(stored, current, f"run {original.id}", str(path))
                ),
            ]
    return lines + (drifted or [f"sources: the working copy in {base} is as recorded"])


def _changes(what: str, old: dict, new: dict) -> list[str]:
    changed = [
        f"{what}: {key} {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if not same(old.get(key), new.get(key))
    ]
    return changed or [f"{what}: same"]


def _shown(value: Any) -> str:
    # Plain words, never a Python repr: "(none)", "Linux, x86_64", "name=GPU 0".
    if value is None:
        return "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_shown(v)}" for k, v in value.items()) or "(none)"
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(v) for v in value) or "(none)"
    return str(to_data(value))


def _git_drift(original: RunRecord) -> list[str]:
    repos = original.experiment_info.get("repositories") or []
    base = original.experiment_info.get("base_dir") or ""
    now = git_state(base)
    then = {"commit": repos[0].get("commit"), "dirty": repos[0].get("dirty")} if repos else None
    if then is None and now is None:
        return ["git: no repository, then or now"]
    if then == now:
        return [f"git: same ({_git_text(now)})"]
    return [f"git: {_git_text(then)} then, {_git_text(now)} now"]


def _git_text(state: dict | None) -> str:
    if state is None:
        return "no repository"
    commit = state.get("commit")
    text = f"commit {commit}" if commit else "a repository without commits"
    return text + (" with uncommitted changes" if state.get("dirty") else "")


def git_state(folder: str) -> dict | None:
    """The commit and dirty flag of the git work tree holding ``folder``, or ``None``."""
    if not folder or not os.path.isdir(folder):
        return None
    # Probed as a run records it (untracked files do not count), so that then and now compare.
    repository = repository_of(folder)
    if repository is None or repository.commit is None:
        return None
    return {"commit": repository.commit, "dirty": repository.dirty}
