"""expkit_jsonstore: runs as JSON files in a folder (``--store jsonstore:///ABS/FOLDER``).

A complete third-party store on expkit's store layer: the primitives below are all
it writes; recording, resuming, listing, ``expkit runs``, ``rerun`` and ``sync``
come from the layer. It is registered under the ``expkit`` entry-point group by
the ``expkit_jsonstore-1.0.dist-info`` beside it (this module is also the example
of docs/plugins.rst: keep them alike).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl
from expkit.store import Storage, StoreBackend, StoredFile, doc_from_data, doc_to_data


class JsonStorage(Storage):
    """``FOLDER/<id>.json`` a run, ``<id>.metrics.jsonl`` its points, ``blobs/<md5>`` files."""

    capabilities = frozenset({"delete", "edit"})

    def __init__(self, url: str) -> None:
        self.url = url
        self.folder = Path(url.removeprefix("jsonstore://"))
        if not self.folder.is_absolute():
            raise UsageError(f"jsonstore needs an absolute path, got {str(self.folder)!r}")

    def create(self, doc: dict) -> str:
        run_id = str(doc["_id"] or uuid.uuid4().hex)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._doc(run_id), "x", encoding="utf-8") as f:  # "x": an id once
                json.dump(doc_to_data({**doc, "_id": run_id}), f)
        except FileExistsError:
            raise UsageError(f"run {run_id!r} already exists in {self.url}") from None
        return run_id

    def reopen(self, run_id: Any) -> dict:
        return self.load(run_id)

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        temp = self._doc(doc["_id"]).with_suffix(".tmp")
        temp.write_text(json.dumps(doc_to_data(doc)), encoding="utf-8")
        os.replace(temp, self._doc(doc["_id"]))  # readers see the old run or the new one

    def put_file(self, kind: str, name: str, path: str, md5: str | None) -> str:
        data = Path(path).read_bytes()
        digest = hashlib.md5(data).hexdigest()
        (self.folder / "blobs").mkdir(parents=True, exist_ok=True)
        (self.folder / "blobs" / digest).write_bytes(data)
        return digest

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        with open(self.folder / f"{run_id}.metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(columns) + "\n")

    def summaries(self) -> list[dict]:
        return [self.load(path.stem) for path in sorted(self.folder.glob("*.json"))]

    def load(self, run_id: Any) -> dict:
        path = self._doc(run_id)
        if not path.is_file():
            raise KeyError(f"no run {run_id!r} in {self.url}")
        return doc_from_data(json.loads(path.read_text(encoding="utf-8")))

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        metrics: dict[str, dict] = {}
        path = self.folder / f"{run_id}.metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else ():
            for name, column in json.loads(line).items():
                series = metrics.setdefault(name, {"steps": [], "values": [], "timestamps": []})
                for key, values in series.items():
                    values.extend(column[key])
        return metrics

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        return (self.folder / "blobs" / str(file.ref)).read_bytes()

    def delete(self, run_id: Any) -> None:
        self._doc(run_id).unlink()
        Path(self.folder / f"{run_id}.metrics.jsonl").unlink(missing_ok=True)

    def _doc(self, run_id: Any) -> Path:
        name = str(run_id)
        if not name or "/" in name or name.startswith("."):
            raise KeyError(f"no run {name!r} in {self.url}")
        return self.folder / f"{name}.json"


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """Claim ``jsonstore://``."""
    return [StoreBackend("jsonstore", ("jsonstore",), JsonStorage)]
