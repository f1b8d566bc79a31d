"""Records runs into a TinyDB store, for the test of several processes sharing one.

Usage: python tinydb_store_worker.py STORE WORKER RUNS GO_FILE

Waits until GO_FILE exists (so that all workers start together), then records
RUNS runs with ids ``w<WORKER>-r<i>``, each with heartbeats, metrics and an
artifact, writing at every event.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

from expkit_plugins.tinydb_store import TinyDbObserver


def main(store: str, worker: int, runs: int, go_file: str) -> None:
    deadline = time.monotonic() + 60
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            raise SystemExit("GO file never appeared")
        time.sleep(0.005)
    observer = TinyDbObserver(store, write_interval=0)
    artifact = Path(store).parent / f"artifact-{worker}.txt"
    artifact.write_text(f"from worker {worker}\n")
    for i in range(runs):
        now = datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i)
        run_id = observer.started_event(
            ex_info={"name": f"worker{worker}", "base_dir": store, "sources": []},
            command="main",
            host_info={"hostname": "test"},
            start_time=now,
            config={"worker": worker, "i": i},
            meta_info={},
            _id=f"w{worker}-r{i}",
        )
        out = ""
        for step in range(3):
            out += f"{run_id} step {step}\n"
            observer.log_metrics(
                {
                    "loss": {
                        "name": "loss",
                        "steps": [step],
                        "values": [i + step],
                        "timestamps": [now],
                    }
                },
                info={},
            )
            observer.heartbeat_event(
                info={"step": step}, captured_out=out, beat_time=now, result=None
            )
        observer.artifact_event("out.txt", str(artifact))
        observer.completed_event(stop_time=now, result=i)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
