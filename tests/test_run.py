"""The run: its attributes and statuses, heartbeats, hooks and observer events, parallel runs."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_script

import expkit
from expkit import Experiment, ExpkitError, RunObserver, TimeoutInterrupt
from expkit.pluginmanager import create_plugin_manager, hookimpl
from expkit.records import Artifact, MetricPoint, Resource
from expkit.settings import SETTINGS

EXPKIT_DIR = Path(expkit.__file__).resolve().parent
PLUGINS_DIR = EXPKIT_DIR.parent / "plugins"

# Options most tests use: Python-level capture, and only the final heartbeat, so orders are fixed.
QUIET = {"--capture": "sys", "--beat-interval": 0}


class EventLog(RunObserver):
    """A Sacred-style observer with Sacred's exact method signatures; notes every event."""

    def __init__(self, run_id: Any = None, priority: int = 0) -> None:
        self.run_id = run_id
        self.priority = priority
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def _note(self, event: str, /, **kwargs: Any) -> None:
        with self.lock:
            self.events.append((event, kwargs))

    def names(self) -> list[str]:
        """The event names in order."""
        return [name for name, _ in self.events]

    def steps(self) -> list[str]:
        """The event names in order, without empty metric batches (Sacred sends one per beat)."""
        return [
            name
            for name, kwargs in self.events
            if not (name == "metrics" and not kwargs["metrics_by_name"])
        ]

    def first(self, name: str) -> dict:
        """The arguments of the first event called ``name``."""
        return next(kwargs for n, kwargs in self.events if n == name)

    def queued_event(self, ex_info, command, host_info, queue_time, config, meta_info, _id):
        self._note(
            "queued",
            ex_info=ex_info,
            command=command,
            host_info=host_info,
            queue_time=queue_time,
            config=config,
            meta_info=meta_info,
            _id=_id,
        )
        return self.run_id

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self._note(
            "started",
            ex_info=ex_info,
            command=command,
            host_info=host_info,
            start_time=start_time,
            config=dict(config),
            meta_info=meta_info,
            _id=_id,
        )
        return self.run_id

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._note(
            "heartbeat",
            info=dict(info),
            captured_out=captured_out,
            beat_time=beat_time,
            result=result,
            at=time.monotonic(),
        )

    def completed_event(self, stop_time, result):
        self._note("completed", stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        self._note("interrupted", interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        self._note("failed", fail_time=fail_time, fail_trace=fail_trace)

    def resource_event(self, filename):
        self._note("resource", filename=filename)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._note(
            "artifact", name=name, filename=filename, metadata=metadata, content_type=content_type
        )

    def log_metrics(self, metrics_by_name, info):
        self._note("metrics", metrics_by_name=metrics_by_name, info=dict(info))

    def join(self):
        self._note("join")


class HookLog:
    """A plugin object implementing every ``expkit_run_*`` hook; notes what it sees."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.runs: list[Any] = []

    def _note(self, name: str, run: Any, **extra: Any) -> None:
        self.runs.append(run)
        state = {"status": run.status, "result": run.result, "start_time": run.start_time}
        self.calls.append((name, {**state, "stop_time": run.stop_time, **extra}))

    def names(self) -> list[str]:
        """The hook names in order, without the ``expkit_`` prefix."""
        return [name for name, _ in self.calls]

    @hookimpl
    def expkit_run_setup(self, run):
        self._note("setup", run)

    @hookimpl
    def expkit_run_queued(self, run):
        self._note("queued", run)

    @hookimpl
    def expkit_run_started(self, run):
        self._note("started", run)

    @hookimpl
    def expkit_run_heartbeat(self, run):
        self._note("heartbeat", run, info=dict(run.info))

    @hookimpl
    def expkit_run_completed(self, run):
        self._note("completed", run)

    @hookimpl
    def expkit_run_failed(self, run):
        self._note("failed", run, fail_trace=run.fail_trace)

    @hookimpl
    def expkit_run_interrupted(self, run):
        self._note("interrupted", run)

    @hookimpl
    def expkit_log_metrics(self, run, metrics):
        self._note("log_metrics", run, metrics=list(metrics))

    @hookimpl
    def expkit_artifact_added(self, run, artifact):
        self._note("artifact_added", run, artifact=artifact)

    @hookimpl
    def expkit_resource_added(self, run, resource):
        self._note("resource_added", run, resource=resource)


# Observer events and the hooks that report the same step.
EVENT_FOR_HOOK = {
    "queued": "queued",
    "started": "started",
    "heartbeat": "heartbeat",
    "completed": "completed",
    "failed": "failed",
    "interrupted": "interrupted",
    "log_metrics": "metrics",
    "artifact_added": "artifact",
    "resource_added": "resource",
}


@pytest.fixture
def hooks() -> HookLog:
    """A plugin object that records the run hooks."""
    return HookLog()


@pytest.fixture
def ex(hooks: HookLog) -> Experiment:
    """An experiment on its own plugin manager, with ``hooks`` registered."""
    return Experiment("probe", plugin_manager=create_plugin_manager(plugins=[hooks]))


@pytest.fixture
def log() -> EventLog:
    """An observer that records every event."""
    return EventLog()


def _frames(trace: list[str]) -> list[str]:
    """The file names of the frames in a formatted traceback."""
    files = []
    for line in "".join(trace).splitlines():
        stripped = line.strip()
        if stripped.startswith('File "'):
            files.append(stripped.split('"')[1])
    return files


# --- the attributes of a run ------------------------------------------------------------


def test_a_completed_run_has_sacreds_attributes(ex: Experiment, log: EventLog) -> None:
    log.run_id = "run-1"
    ex.observers.append(log)
    ex.add_config(a=2)
    seen: dict = {}

    @ex.main
    def main(a, _run):
        seen["status"] = _run.status
        seen["current"] = ex.current_run is _run
        print("printed by main")
        _run.info["seen"] = a
        ex.info["via_ex"] = True
        return a * 10

    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    run = ex.run(
        config_updates={"a": 3},
        info={"given": 1},
        meta_info={"mine": "yes"},
        options={"--capture": "sys"},
    )
    after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    assert run._id == "run-1"
    assert run.status == "COMPLETED"
    assert seen == {"status": "RUNNING", "current": True}
    assert ex.current_run is None
    assert run.result == 30
    assert run.config["a"] == 3
    assert set(run.config) == {"a", "seed"}
    assert run.info == {"given": 1, "seen": 3, "via_ex": True}
    assert before <= run.start_time <= run.stop_time <= after
    assert "printed by main" in run.captured_out
    assert run.host_info["hostname"] == socket.gethostname()
    assert run.experiment_info["name"] == "probe"
    assert run.experiment_info["mainfile"] == "test_run.py"
    assert "test_run.py" in [name for name, _ in run.experiment_info["sources"]]
    assert run.meta_info["command"] == "main"
    assert run.meta_info["config_updates"] == {"a": 3}
    assert run.meta_info["mine"] == "yes"
    assert run.fail_trace is None


def test_without_observers_the_id_is_none_and_an_id_option_sets_it(
    ex: Experiment, log: EventLog
) -> None:
    @ex.main
    def main():
        return 1

    assert ex.run(options=QUIET)._id is None
    ex.observers.append(log)
    run = ex.run(options={**QUIET, "--id": "chosen"})
    assert run._id == "chosen"
    assert log.first("started")["_id"] == "chosen"


def test_log_scalar_counts_implicit_steps_and_keeps_explicit_ones(
    ex: Experiment, log: EventLog, hooks: HookLog
) -> None:
    ex.observers.append(log)

    @ex.main
    def main(_run):
        for value in (0.5, 0.4, 0.3):
            _run.log_scalar("loss", value)
        _run.log_scalar("acc", 0.7, 10)
        ex.log_scalar("acc", 0.8, step=20)
        _run.log_scalar("acc", 0.9)

    ex.run(options=QUIET)
    merged: dict[str, dict[str, list]] = {}
    for batch in [kw["metrics_by_name"] for name, kw in log.events if name == "metrics"]:
        for metric, entry in batch.items():
            assert entry["name"] == metric
            into = merged.setdefault(metric, {"steps": [], "values": [], "timestamps": []})
            for key in into:
                into[key] += entry[key]
    assert merged["loss"]["steps"] == [0, 1, 2]
    assert merged["loss"]["values"] == [0.5, 0.4, 0.3]
    assert merged["acc"]["steps"] == [10, 20, 21]
    assert merged["acc"]["values"] == [0.7, 0.8, 0.9]
    assert all(isinstance(t, datetime.datetime) for t in merged["loss"]["timestamps"])
    points = [p for name, kw in hooks.calls if name == "log_metrics" for p in kw["metrics"]]
    assert all(isinstance(p, MetricPoint) for p in points)
    assert [(p.name, p.step, p.value) for p in points if p.name == "acc"] == [
        ("acc", 10, 0.7),
        ("acc", 20, 0.8),
        ("acc", 21, 0.9),
    ]


def test_metric_hook_keeps_each_metrics_order_when_the_clock_steps_back(
    ex: Experiment, hooks: HookLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    clock = iter([1000.0, 1003.0, 999.0, 1001.0, 1002.0])  # an NTP step back after the 2nd
    monkeypatch.setattr("expkit.run.time", types.SimpleNamespace(time=lambda: next(clock)))

    @ex.main
    def main(_run):
        _run.log_scalar("loss", 0.5)  # 1000
        _run.log_scalar("loss", 0.4)  # 1003
        _run.log_scalar("loss", 0.3)  # 999
        _run.log_scalar("acc", 0.7)  # 1001
        _run.log_scalar("acc", 0.8)  # 1002

    ex.run(options=QUIET)
    points = [p for name, kw in hooks.calls if name == "log_metrics" for p in kw["metrics"]]
    by_name = {n: [p.value for p in points if p.name == n] for n in ("loss", "acc")}
    assert by_name == {"loss": [0.5, 0.4, 0.3], "acc": [0.7, 0.8]}


def test_add_artifact_reaches_observers_and_hooks(
    ex: Experiment, log: EventLog, hooks: HookLog, tmp_path: Path
) -> None:
    ex.observers.append(log)
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights")
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"png")

    @ex.main
    def main(_run):
        _run.add_artifact(model)
        ex.add_artifact(str(plot), name="figure", metadata={"dpi": 90}, content_type="image/png")
        try:
            _run.add_artifact(tmp_path / "missing.txt")
        except ExpkitError as exc:
            return str(exc)

    run = ex.run(options=QUIET)
    assert "missing.txt" in run.result
    artifacts = [kw for name, kw in log.events if name == "artifact"]
    assert artifacts == [
        {"name": "model.bin", "filename": str(model), "metadata": None, "content_type": None},
        {
            "name": "figure",
            "filename": str(plot),
            "metadata": {"dpi": 90},
            "content_type": "image/png",
        },
    ]
    added = [kw["artifact"] for name, kw in hooks.calls if name == "artifact_added"]
    assert added == [
        Artifact("model.bin", str(model)),
        Artifact("figure", str(plot), {"dpi": 90}, "image/png"),
    ]


def test_add_and_open_resource_record_each_input_file_once(
    ex: Experiment, log: EventLog, hooks: HookLog, tmp_path: Path
) -> None:
    ex.observers.append(log)
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    other = tmp_path / "other.txt"
    other.write_text("other")

    @ex.main
    def main(_run):
        with _run.open_resource(data) as f:
            first = f.read()
        with ex.open_resource(str(data)) as f:
            again = f.read()
        _run.add_resource(other)
        return first, again

    run = ex.run(options=QUIET)
    assert run.result == ("x,y\n1,2\n", "x,y\n1,2\n")
    assert [kw["filename"] for name, kw in log.events if name == "resource"] == [
        str(data),
        str(other),
    ]
    resources = [kw["resource"] for name, kw in hooks.calls if name == "resource_added"]
    assert resources == [
        Resource(str(data), hashlib.md5(b"x,y\n1,2\n").hexdigest()),
        Resource(str(other), hashlib.md5(b"other").hexdigest()),
    ]


def test_the_run_shortcuts_outside_a_run_are_a_clear_error(ex: Experiment) -> None:
    with pytest.raises(RuntimeError, match="no current run"):
        ex.log_scalar("loss", 1.0)


# --- statuses ---------------------------------------------------------------------------


def _raise_bad_value(value: int) -> None:
    raise ValueError(f"bad value {value}")


def test_an_exception_fails_the_run_with_the_users_traceback(
    ex: Experiment, log: EventLog, hooks: HookLog
) -> None:
    ex.observers.append(log)
    ex.add_config(value=7)

    @ex.main
    def main(value):
        _raise_bad_value(value)

    with pytest.raises(ValueError, match="bad value 7"):
        ex.run(options=QUIET)
    run = hooks.runs[-1]
    assert run.status == "FAILED"
    assert run.result is None
    assert run.stop_time is not None
    trace = "".join(run.fail_trace)
    assert trace.startswith("Traceback")
    assert trace.rstrip().endswith("ValueError: bad value 7")
    assert "in main" in trace and "in _raise_bad_value" in trace
    files = _frames(run.fail_trace)
    assert files and all(Path(f).name == "test_run.py" for f in files), files
    assert not [f for f in files if f.startswith((str(EXPKIT_DIR), str(PLUGINS_DIR)))]
    assert "pluggy" not in trace
    assert log.names()[-2:] == ["failed", "join"]
    assert log.first("failed")["fail_trace"] == run.fail_trace
    assert "completed" not in log.names()


def test_keyboard_interrupt_marks_the_run_interrupted(
    ex: Experiment, log: EventLog, hooks: HookLog
) -> None:
    ex.observers.append(log)

    @ex.main
    def main():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.run(options=QUIET)
    assert hooks.runs[-1].status == "INTERRUPTED"
    assert hooks.runs[-1].fail_trace is None
    assert log.first("interrupted")["status"] == "INTERRUPTED"
    assert "failed" not in log.names()


class MyStop(expkit.ExpkitInterrupt):
    """A user's own interrupt with its own status."""

    STATUS = "MY_STATUS"


@pytest.mark.parametrize(
    ("interrupt", "status"),
    [(MyStop, "MY_STATUS"), (TimeoutInterrupt, "TIMEOUT"), (expkit.SacredInterrupt, "INTERRUPTED")],
)
def test_an_interrupt_class_gives_the_run_its_status(
    ex: Experiment, log: EventLog, hooks: HookLog, interrupt: type, status: str
) -> None:
    ex.observers.append(log)

    @ex.main
    def main():
        raise interrupt("stop now")

    with pytest.raises(interrupt):
        ex.run(options=QUIET)
    assert hooks.runs[-1].status == status
    assert log.first("interrupted")["status"] == status
    assert [n for n in hooks.names() if n in ("completed", "failed", "interrupted")] == [
        "interrupted"
    ]


SLEEPER = '''
"""Sleeps until it is stopped; a Sacred-style observer writes every event to a file."""
import json
import os
import time

from expkit import Experiment, RunObserver

HERE = os.path.dirname(os.path.abspath(__file__))


class FileEvents(RunObserver):
    def _write(self, **event):
        with open(os.path.join(HERE, "events.jsonl"), "a") as f:
            f.write(json.dumps(event) + "\\n")

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self._write(event="started", command=command)
        return "sleeper-1"

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._write(event="heartbeat")

    def completed_event(self, stop_time, result):
        self._write(event="completed", result=result)

    def failed_event(self, fail_time, fail_trace):
        self._write(event="failed")

    def interrupted_event(self, interrupt_time, status):
        self._write(event="interrupted", status=status)


ex = Experiment("sleeper")
ex.observers.append(FileEvents())


@ex.automain
def main():
    open(os.path.join(HERE, "ready"), "w").close()
    time.sleep(60)
    return "slept"
'''


def test_sigterm_to_a_real_process_interrupts_its_run(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the experiment never reached main"
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - sent < 20, "the run did not stop on SIGTERM"
    assert proc.returncode != 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "started"
    assert events[-1] == {"event": "interrupted", "status": "INTERRUPTED"}
    assert "completed" not in names and "failed" not in names, (names, err)


# --- heartbeats -------------------------------------------------------------------------


def test_heartbeats_fire_while_main_sleeps_and_once_more_at_the_end(
    ex: Experiment, log: EventLog, hooks: HookLog
) -> None:
    ex.observers.append(log)
    ended: list[float] = []

    @ex.main
    def main(_run):
        for i in range(8):
            _run.info["step"] = i
            time.sleep(0.05)
        ended.append(time.monotonic())
        return "done"

    ex.run(options={"--capture": "sys", "--beat-interval": 0.05})
    beats = [kw for name, kw in log.events if name == "heartbeat"]
    during = [b for b in beats if b["at"] < ended[0]]
    assert len(during) >= 3, len(during)
    assert all(b["result"] is None for b in during)
    assert {b["info"].get("step") for b in during} - {None} != set()
    assert beats[-1]["at"] >= ended[0]
    assert beats[-1]["result"] == "done"
    assert beats[-1]["info"] == {"step": 7}
    assert log.names()[-2:] == ["completed", "join"]
    hook_beats = hooks.names().count("heartbeat")
    assert hook_beats == len(beats)


@pytest.mark.parametrize("interval", [0, -1])
def test_without_a_positive_interval_exactly_one_heartbeat_fires_at_the_end(
    ex: Experiment, log: EventLog, hooks: HookLog, interval: float
) -> None:
    ex.observers.append(log)
    ended: list[float] = []

    @ex.main
    def main():
        time.sleep(0.15)
        ended.append(time.monotonic())
        return 5

    ex.run(options={"--capture": "sys", "--beat-interval": interval})
    beats = [kw for name, kw in log.events if name == "heartbeat"]
    assert len(beats) == 1
    assert beats[0]["result"] == 5
    assert beats[0]["at"] >= ended[0]
    assert hooks.names().count("heartbeat") == 1


class StuckBeats(EventLog):
    """An observer whose heartbeat hangs until main is done (a store that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.main_done = threading.Event()

    def heartbeat_event(self, info, captured_out, beat_time, result):
        super().heartbeat_event(info, captured_out, beat_time, result)
        self.main_done.wait(5)


def test_a_hanging_heartbeat_does_not_hold_up_main(ex: Experiment) -> None:
    stuck = StuckBeats()
    ex.observers.append(stuck)
    timing: dict[str, float] = {}

    @ex.main
    def main(_run):
        timing["start"] = time.monotonic()
        for i in range(10):
            _run.log_scalar("x", i)
            _run.info["i"] = i
            print("step", i)
            time.sleep(0.01)
        timing["end"] = time.monotonic()
        stuck.main_done.set()
        return "ok"

    threads_before = threading.active_count()
    started = time.monotonic()
    run = ex.run(options={"--capture": "sys", "--beat-interval": 0.02})
    total = time.monotonic() - started
    assert run.result == "ok"
    beats = [kw for name, kw in stuck.events if name == "heartbeat"]
    assert any(b["at"] < timing["end"] for b in beats), "no heartbeat was under way during main"
    # ~0.1 s of work; had a heartbeat blocked main, it would have waited the full 5 s.
    assert timing["end"] - timing["start"] < 2.5
    assert total < 4
    assert threading.active_count() == threads_before  # the heartbeat thread is gone


# --- hooks and observer events for each lifecycle step ------------------------------------


def _work(ex: Experiment, tmp_path: Path) -> None:
    """Give ``ex`` a main that adds an artifact and a resource and logs a metric."""
    (tmp_path / "in.txt").write_text("input")
    (tmp_path / "out.txt").write_text("output")

    @ex.main
    def main(_run):
        _run.add_artifact(tmp_path / "out.txt")
        _run.add_resource(tmp_path / "in.txt")
        _run.log_scalar("loss", 1.0)
        return "result"


def test_a_completed_run_fires_each_hook_in_order(
    ex: Experiment, hooks: HookLog, tmp_path: Path
) -> None:
    _work(ex, tmp_path)
    run = ex.run(options=QUIET)
    assert hooks.names() == [
        "setup",
        "started",
        "artifact_added",
        "resource_added",
        "log_metrics",
        "heartbeat",
        "completed",
    ]
    assert all(r is run for r in hooks.runs)
    calls = dict(hooks.calls)
    assert calls["setup"]["start_time"] is None
    assert calls["started"]["status"] == "RUNNING"
    assert calls["started"]["start_time"] is not None
    assert calls["heartbeat"]["result"] == "result"
    assert calls["completed"]["status"] == "COMPLETED"
    assert calls["completed"]["result"] == "result"
    assert calls["completed"]["stop_time"] is not None


def test_an_observer_receives_the_same_steps_as_the_hooks(
    ex: Experiment, hooks: HookLog, log: EventLog, tmp_path: Path
) -> None:
    ex.observers.append(log)
    _work(ex, tmp_path)
    run = ex.run(options=QUIET)
    hook_steps = [EVENT_FOR_HOOK[n] for n in hooks.names() if n in EVENT_FOR_HOOK]
    assert log.steps() == [*hook_steps, "join"]
    started = log.first("started")
    assert started["command"] == "main"
    assert started["ex_info"]["name"] == "probe"
    assert started["host_info"] == run.host_info
    assert started["config"] == run.config
    assert started["meta_info"]["command"] == "main"
    assert started["_id"] is None
    assert started["start_time"] == run.start_time
    assert log.first("completed") == {"stop_time": run.stop_time, "result": "result"}
    beat = log.first("heartbeat")
    assert (beat["result"], beat["info"]) == ("result", {})
    assert isinstance(beat["beat_time"], datetime.datetime)


@pytest.mark.parametrize(
    ("raised", "final"),
    [(ValueError, "failed"), (KeyboardInterrupt, "interrupted"), (MyStop, "interrupted")],
)
def test_failed_and_interrupted_runs_fire_their_hooks_and_events(
    ex: Experiment, hooks: HookLog, log: EventLog, raised: type, final: str
) -> None:
    ex.observers.append(log)

    @ex.main
    def main():
        raise raised()

    with pytest.raises(raised):
        ex.run(options=QUIET)
    assert hooks.names() == ["setup", "started", "heartbeat", final]
    assert log.steps() == ["started", "heartbeat", final, "join"]


def test_a_queued_run_only_reports_queued(ex: Experiment, hooks: HookLog, log: EventLog) -> None:
    log.run_id = "queued-7"
    ex.observers.append(log)
    called: list[int] = []

    @ex.main
    def main():
        called.append(1)

    run = ex.run(options={**QUIET, "--queue": True})
    assert called == []
    assert run.status == "QUEUED"
    assert run._id == "queued-7"
    assert hooks.names() == ["queued"]
    assert log.names()[0] == "queued"
    assert not {"started", "completed", "failed", "interrupted"} & set(log.names())
    queued = log.first("queued")
    assert queued["command"] == "main"
    assert queued["config"] == run.config
    assert isinstance(queued["queue_time"], datetime.datetime)


def test_the_first_observer_by_priority_names_the_run(ex: Experiment) -> None:
    low, high = EventLog("low-id", priority=1), EventLog("high-id", priority=10)
    ex.observers.extend([low, high])

    @ex.main
    def main():
        return 1

    run = ex.run(options=QUIET)
    assert run._id == "high-id"
    assert high.first("started")["_id"] is None
    assert low.first("started")["_id"] == "high-id"


class FailsToStart(EventLog):
    """An observer whose started_event raises (a store that cannot connect)."""

    def started_event(self, *args, **kwargs):
        raise ConnectionError("store unreachable")


class FailsToBeat(EventLog):
    """An observer whose heartbeat_event raises (a store that went away)."""

    def heartbeat_event(self, *args, **kwargs):
        raise OSError("disk full")


@pytest.mark.parametrize("broken_class", [FailsToStart, FailsToBeat])
def test_a_failing_observer_does_not_fail_the_run(
    ex: Experiment, log: EventLog, caplog: pytest.LogCaptureFixture, broken_class: type
) -> None:
    broken = broken_class(priority=5)
    ex.observers.extend([broken, log])

    @ex.main
    def main():
        time.sleep(0.1)
        return "fine"

    with caplog.at_level(logging.WARNING):
        run = ex.run(options={"--capture": "sys", "--beat-interval": 0.02})
    assert run.status == "COMPLETED"
    assert run.result == "fine"
    assert log.names()[0] == "started"
    assert log.names()[-2:] == ["completed", "join"]
    assert broken_class.__name__ in caplog.text


# --- runs side by side --------------------------------------------------------------------


@pytest.fixture
def keep_std_fds() -> Iterator[None]:
    """Put descriptors 1 and 2 and sys.stdout/stderr back, whatever overlapping captures did."""
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    streams = sys.stdout, sys.stderr
    yield
    sys.stdout, sys.stderr = streams
    for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)


def _experiment(name: str, value: int, observer: EventLog) -> Experiment:
    ex = Experiment(name, plugin_manager=create_plugin_manager())
    ex.add_config(value=value)
    ex.observers.append(observer)
    return ex


def test_two_experiments_run_one_after_another_keep_their_own_state() -> None:
    log_a, log_b = EventLog(), EventLog()
    ex_a = _experiment("exp_a", 1, log_a)
    ex_b = _experiment("exp_b", 2, log_b)

    @ex_a.main
    def main_a(value, _run):
        return ("a", value, _run.experiment_info["name"])

    @ex_b.main
    def main_b(value, _run):
        return ("b", value, _run.experiment_info["name"])

    first = ex_a.run(options=QUIET)
    second = ex_b.run(config_updates={"value": 20}, options=QUIET)
    third = ex_a.run(options=QUIET)
    assert first.result == third.result == ("a", 1, "exp_a")
    assert second.result == ("b", 20, "exp_b")
    assert first.config["value"] == third.config["value"] == 1
    assert [kw["config"]["value"] for name, kw in log_a.events if name == "started"] == [1, 1]
    assert [kw["config"]["value"] for name, kw in log_b.events if name == "started"] == [20]
    assert main_a(value=5, _run=first) == ("a", 5, "exp_a")  # still callable outside a run


def test_two_experiments_run_at_once_in_two_threads_keep_their_own_state(
    keep_std_fds: None,
) -> None:
    log_a, log_b = EventLog(), EventLog()
    ex_a = _experiment("thread_a", 1, log_a)
    ex_b = _experiment("thread_b", 2, log_b)
    both_inside = threading.Barrier(2, timeout=10)

    def body(ex: Experiment, value: int, _run: Any) -> tuple:
        both_inside.wait()  # both runs are inside main now
        print("inside", value)
        _run.info["mine"] = value
        _run.log_scalar("value", value)
        seen_before = (value, ex.current_run is _run)
        both_inside.wait()
        return (*seen_before, _run.config["value"], ex.current_run is _run)

    @ex_a.main
    def main_a(value, _run):
        return body(ex_a, value, _run)

    @ex_b.main
    def main_b(value, _run):
        return body(ex_b, value, _run)

    runs: dict[str, Any] = {}
    errors: list[BaseException] = []

    def start(key: str, ex: Experiment, updates: dict) -> None:
        try:
            runs[key] = ex.run(config_updates=updates, options={"--beat-interval": 0.01})
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=start, args=("a", ex_a, {"value": 10})),
        threading.Thread(target=start, args=("b", ex_b, {})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert runs["a"].result == (10, True, 10, True)
    assert runs["b"].result == (2, True, 2, True)
    assert runs["a"].info == {"mine": 10}
    assert runs["b"].info == {"mine": 2}
    assert runs["a"].status == runs["b"].status == "COMPLETED"
    for observer, value in ((log_a, 10), (log_b, 2)):
        assert observer.first("started")["config"]["value"] == value
        values = [
            v
            for name, kw in observer.events
            if name == "metrics" and "value" in kw["metrics_by_name"]
            for v in kw["metrics_by_name"]["value"]["values"]
        ]
        assert values == [value]
        assert observer.names()[-2:] == ["completed", "join"]
    assert ex_a.current_run is None and ex_b.current_run is None


def _where(fd: int) -> tuple[int, int]:
    """The file behind descriptor ``fd``."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_two_overlapping_runs_leave_stdout_and_stderr_where_they_were(
    keep_std_fds: None,
) -> None:
    before = {fd: _where(fd) for fd in (1, 2)}
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    ex_a = _experiment("overlap_a", 1, EventLog())
    ex_b = _experiment("overlap_b", 2, EventLog())

    @ex_a.main
    def main_a():
        a_inside.set()
        b_inside.wait(10)  # b started while a runs; a ends first
        print("a")

    @ex_b.main
    def main_b():
        b_inside.set()
        a_done.wait(10)
        print("b")

    def run_a() -> None:
        ex_a.run()
        a_done.set()

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert a_inside.wait(10)
    thread_b = threading.Thread(target=ex_b.run)
    thread_b.start()
    thread_a.join(30)
    thread_b.join(30)
    assert {fd: _where(fd) for fd in (1, 2)} == before


class _OutputReader:
    """A user's plugin that reads the output at the end of each run (no store)."""

    def __init__(self) -> None:
        self.outputs: list[str] = []

    @hookimpl
    def expkit_run_completed(self, run):
        self.outputs.append(run.captured_out)


def test_output_is_captured_for_a_plugin_of_the_users_without_a_store() -> None:
    reader = _OutputReader()
    ex = Experiment("told", plugin_manager=create_plugin_manager(plugins=[reader]))

    @ex.main
    def main():
        print("for the plugin")

    run = ex.run()
    assert run.capture_mode == SETTINGS.CAPTURE_MODE
    assert reader.outputs == ["for the plugin\n"]


def test_with_built_in_plugins_only_and_no_store_nothing_is_captured() -> None:
    ex = Experiment("untold", plugin_manager=create_plugin_manager())

    @ex.main
    def main():
        print("for nobody")

    run = ex.run()
    assert (run.capture_mode, run.captured_out) == ("no", "")


def test_a_run_in_a_real_process_captures_output_with_the_default_mode(tmp_path: Path) -> None:
    script = tmp_path / "exp_status.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import sys

            from expkit import Experiment
            from expkit.observers import RunObserver

            ex = Experiment("status")

            @ex.main
            def main():
                print("from python")
                sys.stdout.flush()
                os.system("echo from a child process")
                return 3

            if __name__ == "__main__":
                run = ex.run()
                print("UNSTORED", run.capture_mode, repr(run.captured_out))
                ex.observers.append(RunObserver())  # a store that keeps nothing
                run = ex.run()
                print("STATUS", run.status, run.result)
                print("CAPTURED", run.capture_mode, repr(run.captured_out))
            """
        )
    )
    proc = run_script(script, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # As in Sacred: without a store and without -C, output is not captured.
    assert "UNSTORED no ''" in lines
    assert "STATUS COMPLETED 3" in lines
    captured = next(line for line in lines if line.startswith("CAPTURED "))
    assert captured.startswith("CAPTURED fd ")
    assert "from python\\n" in captured
    assert "from a child process\\n" in captured
    assert os.listdir(tmp_path) == ["exp_status.py"]


def test_a_failing_output_filter_does_not_lose_the_end_of_the_run() -> None:
    events: list[str] = []

    class Recorder(RunObserver):
        def started_event(self, **kwargs):
            events.append("started")

        def completed_event(self, **kwargs):
            events.append("completed")

    ex = Experiment("filter_breaks", interactive=True)
    ex.observers.append(Recorder())

    def broken(text: str) -> str:
        raise ValueError("the filter broke")

    ex.captured_out_filter = broken

    @ex.main
    def main():
        print("some output")
        return 42

    run = ex.run(options={"--capture": "sys"})
    assert (run.status, run.result) == ("COMPLETED", 42)
    assert events == ["started", "completed"]
    assert ex.current_run is None


def test_one_experiment_cannot_run_in_two_threads_at_once() -> None:
    import threading

    from expkit import ExpkitError

    ex = Experiment("one_at_a_time", interactive=True)
    started, release = threading.Event(), threading.Event()

    @ex.main
    def main():
        started.set()
        release.wait(10)
        return "first"

    results: list = []
    thread = threading.Thread(target=lambda: results.append(ex.run().result))
    thread.start()
    started.wait(10)
    try:
        with pytest.raises(ExpkitError, match="already running in another thread"):
            ex.run()
    finally:
        release.set()
        thread.join(10)
    assert results == ["first"]
