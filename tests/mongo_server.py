"""A small in-memory MongoDB for the tests, speaking the real wire protocol.

:class:`MemoryMongo` puts a document store behind ``mockupdb.MockupDB``: the
real pymongo client connects over a real socket, and every command it sends is
answered from dictionaries kept in this process. It implements what the Mongo
store and its tests use, no more:

* handshake and admin: ``hello``/``isMaster``, ``ping``, ``buildInfo``,
  ``endSessions``, SCRAM-SHA-256 authentication (``saslStart``/``saslContinue``)
  when the server was given users;
* writes: ``insert``, ``update`` (replacement, ``$set``, ``$unset``, ``$inc``,
  ``$push`` with ``$each``, ``$setOnInsert``, ``upsert``, ``multi``), ``delete``,
  unique indexes (``_id`` always) reported as duplicate-key errors;
* reads: ``find`` (equality and ``$eq $ne $gt $gte $lt $lte $in $nin $exists
  $type $and $or`` filters on dotted paths, projections, sort, skip, limit)
  with ``getMore``/``killCursors``, ``count``, and ``aggregate`` with
  ``$match $sort $skip $limit $count $group`` (``$sum`` only);
* catalog: ``createIndexes``, ``listIndexes``, ``listCollections``, ``drop``,
  ``dropDatabase``.

Anything else is answered with MongoDB's "no such command" error, so a store
that starts to rely on more shows up as a failing test, not a silent pass.
Every command is recorded in :attr:`MemoryMongo.log` with its encoded size, so
tests can assert what the store sent. Setting :attr:`MemoryMongo.down` makes
the server hang up on every request, as a database that went away would.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import itertools
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId
from mockupdb import MockupDB

_MAX_BATCH_BYTES = 8 * 1024 * 1024
_DEFAULT_FIRST_BATCH = 101
_NO_AUTH_NEEDED = {"ismaster", "hello", "ping", "buildinfo", "saslstart", "saslcontinue"}
_SCRAM_ITERATIONS = 4096

# The one account of the suite's server (tests/conftest.py), so that its URLs carry a password.
USER, PASSWORD = "expkit", "pw-Zq8wX3vR"


class CommandError(Exception):
    """A command failed; becomes an ``{ok: 0, code, errmsg}`` reply."""

    def __init__(self, code: int, errmsg: str, name: str = "") -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.name = name


@dataclass(frozen=True)
class Seen:
    """One command the server received: its name, target and BSON size in bytes."""

    name: str
    db: str
    collection: str | None
    doc: dict
    size: int


@dataclass
class _Collection:
    docs: dict[Any, dict]
    indexes: list[dict]


class MemoryMongo:
    """An in-memory MongoDB server on a free local port; ``users`` turns on authentication."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.databases: dict[str, dict[str, _Collection]] = {}
        self.log: list[Seen] = []
        self.users = dict(users or {})
        self.down = False
        self._server = MockupDB(request_timeout=int(1e6))
        self._lock = threading.RLock()
        self._cursors: dict[int, tuple[str, list[dict]]] = {}
        self._cursor_ids = itertools.count(1)
        self._authenticated: weakref.WeakSet = weakref.WeakSet()  # client sockets
        self._conversations: dict[int, dict] = {}
        self._conversation_ids = itertools.count(1)

    # --- life cycle ------------------------------------------------------------

    def start(self) -> MemoryMongo:
        """Start listening; returns ``self``."""
        self._server.autoresponds(self._respond)
        self._server.run()
        return self

    def stop(self) -> None:
        """Close the server and every client connection."""
        self._server.stop()

    def __enter__(self) -> MemoryMongo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self._server.host}:{self._server.port}"

    def url(self, db: str = "", user: str = "", password: str = "") -> str:
        """A ``mongodb://`` URL for this server, optionally with credentials and a database."""
        cred = f"{user}:{password}@" if user else ""
        return f"mongodb://{cred}{self.address}/{db}"

    # --- inspection for tests ----------------------------------------------------

    def commands(self, name: str, collection: str | None = None) -> list[Seen]:
        """The recorded commands called ``name`` (on ``collection``, if given)."""
        with self._lock:
            return [
                s
                for s in self.log
                if s.name == name and (collection is None or s.collection == collection)
            ]

    def all_documents(self) -> Iterator[tuple[str, str, dict]]:
        """Every stored document as ``(db, collection, doc)``."""
        with self._lock:
            for db_name, db in self.databases.items():
                for coll_name, coll in db.items():
                    for doc in coll.docs.values():
                        yield db_name, coll_name, copy.deepcopy(doc)

    # --- dispatch ----------------------------------------------------------------

    def _respond(self, request: Any) -> bool:
        """mockupdb handler: answer every request from the in-memory data."""
        if self.down:
            return request.hangup()
        doc = dict(request.doc)
        name = next(iter(doc))
        db = doc.get("$db") or request.namespace or "admin"
        target = doc[name] if isinstance(doc[name], str) else None
        size = len(bson.encode(request.doc))
        with self._lock:
            self.log.append(Seen(name, db, target, doc, size))
            try:
                reply = self._run(name, db, doc, request._client)
            except CommandError as exc:
                reply = {"ok": 0, "errmsg": exc.errmsg, "code": exc.code}
                if exc.name:
                    reply["codeName"] = exc.name
            except Exception as exc:  # a bug here must answer, not hang the client
                reply = {"ok": 0, "errmsg": f"MemoryMongo: {exc!r}", "code": 1}
        return request.replies(reply)

    def _run(self, name: str, db: str, doc: dict, connection: Any) -> dict:
        lname = name.lower()
        if self.users and lname not in _NO_AUTH_NEEDED and connection not in self._authenticated:
            raise CommandError(13, f"command {name} requires authentication", "Unauthorized")
        handler = getattr(self, f"_cmd_{lname}", None)
        if handler is None:
            raise CommandError(59, f"no such command: '{name}'", "CommandNotFound")
        if lname in ("saslstart", "saslcontinue"):
            return handler(doc, connection)
        return handler(db, doc)

    # --- admin -------------------------------------------------------------------

    def _cmd_ismaster(self, db: str, doc: dict) -> dict:
        reply = {
            "ismaster": True,
            "isWritablePrimary": True,
            "helloOk": True,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": 17,
            "readOnly": False,
        }
        if self.users and "saslSupportedMechs" in doc:
            reply["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        return reply

    _cmd_hello = _cmd_ismaster

    def _cmd_ping(self, db: str, doc: dict) -> dict:
        return {}

    def _cmd_buildinfo(self, db: str, doc: dict) -> dict:
        return {"version": "6.0.0", "versionArray": [6, 0, 0, 0]}

    def _cmd_endsessions(self, db: str, doc: dict) -> dict:
        return {}

    # --- SCRAM-SHA-256 (RFC 5802/7677), so URLs with passwords really authenticate --

    def _cmd_saslstart(self, doc: dict, connection: Any) -> dict:
        if doc.get("mechanism") != "SCRAM-SHA-256":
            raise CommandError(334, "only SCRAM-SHA-256 is supported", "MechanismUnavailable")
        first = bytes(doc["payload"]).decode()
        bare = first.split(",", 2)[2]
        fields = dict(part.split("=", 1) for part in bare.split(","))
        user = fields["n"]
        salt = hashlib.sha256(f"salt:{user}".encode()).digest()[:16]
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={_SCRAM_ITERATIONS}"
        cid = next(self._conversation_ids)
        self._conversations[cid] = {
            "user": user,
            "salt": salt,
            "nonce": nonce,
            "auth": f"{bare},{server_first}",
        }
        return {"conversationId": cid, "done": False, "payload": server_first.encode()}

    def _cmd_saslcontinue(self, doc: dict, connection: Any) -> dict:
        conv = self._conversations.pop(doc["conversationId"], None)
        if conv is None:
            raise CommandError(17, "no SASL session state found", "ProtocolError")
        final = bytes(doc["payload"]).decode()
        without_proof, proof = final.rsplit(",p=", 1)
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        password = self.users.get(conv["user"])
        if password is None or fields.get("r") != conv["nonce"]:
            raise CommandError(18, "Authentication failed.", "AuthenticationFailed")
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), conv["salt"], _SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        auth_message = f"{conv['auth']},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            raise CommandError(18, "Authentication failed.", "AuthenticationFailed")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        verifier = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        self._authenticated.add(connection)
        return {
            "conversationId": doc["conversationId"],
            "done": True,
            "payload": f"v={verifier}".encode(),
        }

    # --- catalog -----------------------------------------------------------------

    def _collection(self, db: str, name: str, create: bool = False) -> _Collection | None:
        colls = self.databases.get(db)
        if colls is None or name not in colls:
            if not create:
                return None
            colls = self.databases.setdefault(db, {})
            colls[name] = _Collection({}, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        return colls[name]

    def _cmd_createindexes(self, db: str, doc: dict) -> dict:
        coll_name = doc["createIndexes"]
        created = self._collection(db, coll_name) is None
        coll = self._collection(db, coll_name, create=True)
        before = len(coll.indexes)
        for spec in doc["indexes"]:
            if any(ix["name"] == spec["name"] for ix in coll.indexes):
                continue
            index = {"v": 2, "key": dict(spec["key"]), "name": spec["name"]}
            if spec.get("unique"):
                index["unique"] = True
                self._check_unique(db, coll_name, coll, index, list(coll.docs.values()))
            coll.indexes.append(index)
        return {
            "createdCollectionAutomatically": created,
            "numIndexesBefore": before,
            "numIndexesAfter": len(coll.indexes),
        }

    def _cmd_listindexes(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["listIndexes"])
        if coll is None:
            raise CommandError(
                26, f"ns does not exist: {db}.{doc['listIndexes']}", "NamespaceNotFound"
            )
        return self._cursor_reply(f"{db}.{doc['listIndexes']}", copy.deepcopy(coll.indexes), doc)

    def _cmd_listcollections(self, db: str, doc: dict) -> dict:
        infos = [
            {"name": name, "type": "collection", "options": {}, "info": {"readOnly": False}}
            for name in self.databases.get(db, {})
        ]
        infos = [i for i in infos if _matches(i, doc.get("filter") or {})]
        return self._cursor_reply(f"{db}.$cmd.listCollections", infos, doc)

    def _cmd_drop(self, db: str, doc: dict) -> dict:
        if self._collection(db, doc["drop"]) is None:
            raise CommandError(26, "ns not found", "NamespaceNotFound")
        del self.databases[db][doc["drop"]]
        return {}

    def _cmd_dropdatabase(self, db: str, doc: dict) -> dict:
        self.databases.pop(db, None)
        return {}

    # --- writes ------------------------------------------------------------------

    def _cmd_insert(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["insert"], create=True)
        n, errors = 0, []
        for i, new in enumerate(doc.get("documents", [])):
            new = copy.deepcopy(dict(new))
            new.setdefault("_id", ObjectId())
            try:
                self._check_all_unique(db, doc["insert"], coll, new, None)
            except CommandError as exc:
                errors.append({"index": i, "code": exc.code, "errmsg": exc.errmsg})
                if doc.get("ordered", True):
                    break
                continue
            coll.docs[_hashable(new["_id"])] = new
            n += 1
        return _write_reply(n, errors)

    def _cmd_update(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["update"], create=True)
        n = modified = 0
        upserted, errors = [], []
        for i, spec in enumerate(doc.get("updates", [])):
            try:
                matched = [d for d in coll.docs.values() if _matches(d, spec.get("q") or {})]
                if not spec.get("multi"):
                    matched = matched[:1]
                for old in matched:
                    new = _apply_update(old, spec["u"], inserting=False)
                    self._check_all_unique(db, doc["update"], coll, new, old["_id"])
                    n += 1
                    if new != old:
                        modified += 1
                        coll.docs[_hashable(old["_id"])] = new
                if not matched and spec.get("upsert"):
                    new = _apply_update(_seed_from_query(spec.get("q") or {}), spec["u"], True)
                    new.setdefault("_id", ObjectId())
                    self._check_all_unique(db, doc["update"], coll, new, None)
                    coll.docs[_hashable(new["_id"])] = new
                    n += 1
                    upserted.append({"index": i, "_id": new["_id"]})
            except CommandError as exc:
                errors.append({"index": i, "code": exc.code, "errmsg": exc.errmsg})
                if doc.get("ordered", True):
                    break
        reply = _write_reply(n, errors)
        reply["nModified"] = modified
        if upserted:
            reply["upserted"] = upserted
        return reply

    def _cmd_delete(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["delete"])
        n = 0
        for spec in doc.get("deletes", []):
            if coll is None:
                break
            matched = [d for d in coll.docs.values() if _matches(d, spec.get("q") or {})]
            if spec.get("limit"):
                matched = matched[: spec["limit"]]
            for d in matched:
                del coll.docs[_hashable(d["_id"])]
                n += 1
        return {"n": n}

    def _check_all_unique(
        self, db: str, coll_name: str, coll: _Collection, doc: dict, self_id: Any
    ) -> None:
        if self_id is None and _hashable(doc["_id"]) in coll.docs:
            raise CommandError(
                11000,
                f"E11000 duplicate key error collection: {db}.{coll_name}"
                f" index: _id_ dup key: {{ _id: {doc['_id']!r} }}",
                "DuplicateKey",
            )
        others = [d for d in coll.docs.values() if self_id is None or d["_id"] != self_id]
        for index in coll.indexes:
            if index.get("unique"):
                self._check_unique(db, coll_name, coll, index, [*others, doc])

    @staticmethod
    def _check_unique(
        db: str, coll_name: str, coll: _Collection, index: dict, docs: list[dict]
    ) -> None:
        seen: set = set()
        for d in docs:
            key = tuple(_hashable(_get(d, field)) for field in index["key"])
            if key in seen:
                raise CommandError(
                    11000,
                    f"E11000 duplicate key error collection: {db}.{coll_name}"
                    f" index: {index['name']} dup key: {key!r}",
                    "DuplicateKey",
                )
            seen.add(key)

    # --- reads -------------------------------------------------------------------

    def _cmd_find(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["find"])
        docs = [] if coll is None else list(coll.docs.values())
        docs = [d for d in docs if _matches(d, doc.get("filter") or {})]
        docs = _sort(docs, doc.get("sort"))
        docs = docs[doc.get("skip", 0) :]
        limit = abs(doc.get("limit", 0))
        if limit:
            docs = docs[:limit]
        projection = doc.get("projection")
        docs = [_project(d, projection) if projection else copy.deepcopy(d) for d in docs]
        return self._cursor_reply(f"{db}.{doc['find']}", docs, doc)

    def _cmd_count(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["count"])
        docs = [] if coll is None else list(coll.docs.values())
        return {"n": sum(1 for d in docs if _matches(d, doc.get("query") or {}))}

    def _cmd_aggregate(self, db: str, doc: dict) -> dict:
        coll = self._collection(db, doc["aggregate"])
        docs = [] if coll is None else [copy.deepcopy(d) for d in coll.docs.values()]
        for stage in doc["pipeline"]:
            (op, arg), *_ = stage.items()
            if op == "$match":
                docs = [d for d in docs if _matches(d, arg)]
            elif op == "$sort":
                docs = _sort(docs, arg)
            elif op == "$skip":
                docs = docs[arg:]
            elif op == "$limit":
                docs = docs[:arg]
            elif op == "$count":
                docs = [{arg: len(docs)}] if docs else []
            elif op == "$group":
                docs = _group(docs, arg)
            else:
                raise CommandError(40324, f"Unrecognized pipeline stage name: '{op}'")
        return self._cursor_reply(f"{db}.{doc['aggregate']}", docs, doc)

    def _cmd_getmore(self, db: str, doc: dict) -> dict:
        cid = int(doc["getMore"])
        if cid not in self._cursors:
            raise CommandError(43, f"cursor id {cid} not found", "CursorNotFound")
        ns, remaining = self._cursors.pop(cid)
        batch, rest = _batch(remaining, doc.get("batchSize") or len(remaining))
        if rest:
            self._cursors[cid] = (ns, rest)
        return {"cursor": {"id": Int64(cid if rest else 0), "ns": ns, "nextBatch": batch}}

    def _cmd_killcursors(self, db: str, doc: dict) -> dict:
        killed = [c for c in doc.get("cursors", []) if self._cursors.pop(int(c), None)]
        return {"cursorsKilled": killed, "cursorsNotFound": [], "cursorsAlive": []}

    def _cursor_reply(self, ns: str, docs: list[dict], doc: dict) -> dict:
        size = (doc.get("cursor") or {}).get("batchSize") or doc.get("batchSize")
        if doc.get("singleBatch") or doc.get("limit", 0) < 0:
            size = len(docs)
        batch, rest = _batch(docs, size or _DEFAULT_FIRST_BATCH)
        cid = 0
        if rest:
            cid = next(self._cursor_ids)
            self._cursors[cid] = (ns, rest)
        return {"cursor": {"id": Int64(cid), "ns": ns, "firstBatch": batch}}


# --- documents ----------------------------------------------------------------------

_MISSING = object()


def _write_reply(n: int, errors: list[dict]) -> dict:
    reply: dict = {"n": n}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _batch(docs: list[dict], size: int) -> tuple[list[dict], list[dict]]:
    """At most ``size`` documents and about 8 MB, so that no reply grows too large."""
    total, end = 0, 0
    for end, d in enumerate(docs[:size], 1):
        total += len(bson.encode(d))
        if total > _MAX_BATCH_BYTES and end > 1:
            end -= 1
            break
    return docs[:end], docs[end:]


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _get(doc: Any, path: str) -> Any:
    """The value at a dotted ``path``; over arrays, the list of the elements' values."""
    for i, part in enumerate(path.split(".")):
        if isinstance(doc, dict):
            doc = doc.get(part, _MISSING)
        elif isinstance(doc, list):
            if part.isdigit() and int(part) < len(doc):
                doc = doc[int(part)]
            else:
                rest = ".".join(path.split(".")[i:])
                values = [_get(d, rest) for d in doc if isinstance(d, dict)]
                return [v for v in values if v is not _MISSING] or _MISSING
        else:
            return _MISSING
        if doc is _MISSING:
            return _MISSING
    return doc


_TYPE_RANK = [
    (type(None), 1),
    (bool, 8),
    ((int, float), 2),
    (str, 3),
    (dict, 4),
    (list, 5),
    (bytes, 6),
    (ObjectId, 7),
    (datetime.datetime, 9),
]
_TYPE_ALIASES = {
    "number": (int, float),
    "int": int,
    "long": int,
    "double": float,
    "string": str,
    "object": dict,
    "array": list,
    "objectId": ObjectId,
    "date": datetime.datetime,
    "bool": bool,
    "null": type(None),
}


def _rank(value: Any) -> int:
    for types, rank in _TYPE_RANK:
        if isinstance(value, types):
            return rank
    return 10


def _compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 if ``a`` and ``b`` are of the same BSON kind, else ``None``."""
    if _rank(a) != _rank(b) or isinstance(a, (dict, list)):
        return None
    return (a > b) - (a < b)


def _value_matches(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        return all(_operator_matches(value, op, arg) for op, arg in cond.items())
    if value is _MISSING:
        return cond is None
    if isinstance(value, list) and not isinstance(cond, list):
        return any(_value_matches(v, cond) for v in value)
    return _rank(value) == _rank(cond) and value == cond


def _operator_matches(value: Any, op: str, arg: Any) -> bool:
    if op == "$exists":
        return (value is not _MISSING) == bool(arg)
    if op == "$eq":
        return _value_matches(value, arg)
    if op == "$ne":
        return not _value_matches(value, arg)
    if op == "$in":
        return any(_value_matches(value, a) for a in arg)
    if op == "$nin":
        return not any(_value_matches(value, a) for a in arg)
    if op == "$type":
        types = _TYPE_ALIASES[arg]
        return (
            value is not _MISSING
            and isinstance(value, types)
            and not (isinstance(value, bool) and types is not bool)
        )
    wanted = {"$gt": (1,), "$gte": (0, 1), "$lt": (-1,), "$lte": (-1, 0)}.get(op)
    if wanted is None:
        raise CommandError(2, f"unknown operator: {op}", "BadValue")
    values = value if isinstance(value, list) else [value]
    return any(_compare(v, arg) in wanted for v in values if v is not _MISSING)


def _matches(doc: dict, query: dict) -> bool:
    for key, cond in query.items():
        if key == "$and":
            ok = all(_matches(doc, q) for q in cond)
        elif key == "$or":
            ok = any(_matches(doc, q) for q in cond)
        else:
            ok = _value_matches(_get(doc, key), cond)
        if not ok:
            return False
    return True


def _sort(docs: list[dict], spec: Any) -> list[dict]:
    for key, direction in reversed(list((spec or {}).items())):

        def sort_key(d: dict, key: str = key) -> tuple:
            v = _get(d, key)
            v = None if v is _MISSING else v
            return (_rank(v), v if _rank(v) in (2, 3, 7, 8, 9) else repr(v))

        docs = sorted(docs, key=sort_key, reverse=direction < 0)
    return docs


def _project(doc: dict, projection: dict) -> dict:
    include = {k for k, v in projection.items() if v and k != "_id"}
    if not include:
        out = copy.deepcopy(doc)
        for k, v in projection.items():
            if not v:
                _unset(out, k)
        return out
    out: dict = {}
    if projection.get("_id", 1) and "_id" in doc:
        out["_id"] = copy.deepcopy(doc["_id"])
    for path in include:
        value = _get(doc, path)
        if value is not _MISSING:
            _set(out, path, copy.deepcopy(value))
    return out


def _group(docs: list[dict], spec: dict) -> list[dict]:
    def evaluate(d: dict, expr: Any) -> Any:
        if isinstance(expr, str) and expr.startswith("$"):
            v = _get(d, expr[1:])
            return None if v is _MISSING else v
        return expr

    groups: dict[Any, dict] = {}
    for d in docs:
        key = evaluate(d, spec["_id"])
        out = groups.setdefault(_hashable(key), {"_id": key})
        for field, acc in spec.items():
            if field == "_id":
                continue
            (op, expr), *_ = acc.items()
            if op != "$sum":
                raise CommandError(15952, f"unknown group operator '{op}'")
            out[field] = out.get(field, 0) + (evaluate(d, expr) or 0)
    return list(groups.values())


# --- updates --------------------------------------------------------------------


def _seed_from_query(query: dict) -> dict:
    """The document an upsert starts from: the query's plain equality fields."""
    doc: dict = {}
    for key, cond in query.items():
        if key.startswith("$") or (isinstance(cond, dict) and any(k.startswith("$") for k in cond)):
            continue
        _set(doc, key, copy.deepcopy(cond))
    return doc


def _apply_update(old: dict, update: Any, inserting: bool) -> dict:
    if isinstance(update, list):
        raise CommandError(9, "pipeline updates are not supported by MemoryMongo", "FailedToParse")
    if not any(k.startswith("$") for k in update):
        new = copy.deepcopy(dict(update))
        if "_id" in old:
            new = {"_id": old["_id"], **{k: v for k, v in new.items() if k != "_id"}}
        return new
    new = copy.deepcopy(old)
    for op, fields in update.items():
        for path, arg in fields.items():
            if path == "_id" and op != "$setOnInsert" and not inserting and arg != old.get("_id"):
                raise CommandError(
                    66,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                    "ImmutableField",
                )
            if op == "$set" or (op == "$setOnInsert" and inserting):
                _set(new, path, copy.deepcopy(arg))
            elif op == "$setOnInsert":
                pass
            elif op == "$unset":
                _unset(new, path)
            elif op == "$inc":
                current = _get(new, path)
                _set(new, path, (0 if current is _MISSING else current) + arg)
            elif op == "$push":
                current = _get(new, path)
                items = arg["$each"] if isinstance(arg, dict) and "$each" in arg else [arg]
                if current is _MISSING:
                    current = []
                elif not isinstance(current, list):
                    raise CommandError(2, f"The field '{path}' must be an array", "BadValue")
                _set(new, path, [*current, *copy.deepcopy(items)])
            else:
                raise CommandError(9, f"Unknown modifier: {op}", "FailedToParse")
    return new


def _set(doc: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(doc, list):
            doc = doc[int(part)]
        else:
            doc = doc.setdefault(part, {})
    if isinstance(doc, list):
        doc[int(parts[-1])] = value
    else:
        doc[parts[-1]] = value


def _unset(doc: dict, path: str) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        doc = doc.get(part) if isinstance(doc, dict) else None
        if doc is None:
            return
    if isinstance(doc, dict):
        doc.pop(parts[-1], None)
