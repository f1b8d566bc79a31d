"""The web application: pages (Jinja templates) and the JSON API under ``/api/``.

Pages are rendered on the server with autoescaping; their scripts fetch the same API a
user can call, and put what they get into the page as text (``textContent``), never as
markup. Endpoints are plain functions Starlette runs in its thread pool, since readers
block.
"""

from __future__ import annotations

import collections
import json
import math
import mimetypes
import posixpath
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from expkit.errors import ExpkitError, UsageError
from expkit.records import RunRecord
from expkit.serialize import to_data, utcnow
from expkit.store import FINAL_STATUSES
from expkit_plugins.runs import source_names
from expkit_plugins.ui import series, views
from expkit_plugins.ui.security import ARTIFACT_POLICY, TOKEN_HEADER, Guard
from expkit_plugins.ui.stores import StoreView

HERE = Path(__file__).resolve().parent
MAX_EDIT_BYTES = 64 * 1024
MAX_COMMENT = 10_000
MAX_HIGHLIGHTED = 512 * 1024  # characters of a source file highlighted; longer ones are plain
KEPT_HIGHLIGHTED = 32 * 1024 * 1024  # characters of highlighted sources of ended runs kept
API_DOC = {
    "GET /api/stores": "the stores shown: index, url, whether runs can be edited, run count",
    "GET /api/runs": "a page of the runs table: ?store= &where= (repeatable, `runs list` "
    "filters) &status= &experiment= &sort= &desc=1|0 &group=1|0 &offset= &limit=",
    "GET /api/runs/ID": "everything about a run but its output and metric values",
    "PATCH /api/runs/ID": 'edit comment and/or tags: {"comment": "...", "tags": ["a", "b"]}; '
    "with If-Match: VERSION (the run's version), refused with 409 if the run changed since",
    "DELETE /api/runs/ID": "delete a run (only when started with --allow-delete)",
    "GET /api/runs/ID/metrics": "metric series, cut to the chart: ?name= (repeatable) "
    "&width= &start= &stop=",
    "GET /api/runs/ID/output": "captured output from ?offset= (characters) on, or its end",
    "GET /api/runs/ID/artifacts/NAME": "an artifact's bytes; ?download=1, ?preview=1 (JSON)",
    "GET /api/runs/ID/sources/NAME": "a stored source file as text",
    "GET /api/runs/ID/resources?path=PATH": "a stored input file's bytes",
    "GET /api/compare": "two or more runs side by side: ?run=ID&run=ID",
    "GET /api/groups": "the sweeps and studies of a store",
    "GET /api/groups/KIND/KEY": "a sweep's or study's runs, parameters and results",
}


class _JSONResponse(JSONResponse):
    """JSON that browsers parse: numbers JSON cannot carry exactly as ``{"$number": TEXT}``."""

    def render(self, content: Any) -> bytes:
        return strict_json(content).encode("utf-8")


EXACT_INTS = 2**53  # a JavaScript number holds every whole number below this, no others


def strict_json(data: Any, **options: Any) -> str:
    """``data`` as JSON text a browser parses without losing a number: a NaN, an infinity
    (which JSON lacks) and a whole number too large for a JavaScript number become
    ``{"$number": "NaN"}``, ``{"$number": "inf"}``, ``{"$number": "-inf"}``,
    ``{"$number": "12345678901234567891"}``, which the pages show as the numbers they are
    (and a string ``"nan"`` stays a string)."""
    return json.dumps(_exact(data), allow_nan=False, ensure_ascii=False, **options)


def _exact(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else {"$number": _float_text(data)}
    if isinstance(data, int) and not isinstance(data, bool):
        return data if -EXACT_INTS < data < EXACT_INTS else {"$number": str(data)}
    if isinstance(data, dict):
        return {k: _exact(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_exact(v) for v in data]
    return data


def _float_text(value: float) -> str:
    """A float as the pages show it: NaN, inf, -inf, or six significant digits."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


class _Refused(Exception):
    """A request that cannot be carried out, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(
    stores: list[StoreView],
    *,
    token: str,
    loopback: bool,
    port: int,
    allow_delete: bool = False,
    beat_interval: float = 10.0,
) -> Any:
    """The ASGI application over ``stores``, behind the :class:`Guard`."""
    ui = _UI(stores, token, allow_delete, beat_interval)
    # Pygments finds its lexers by scanning every installed package once (about 0.25 s):
    # done now, the first run page opened does not wait for it.
    threading.Thread(target=_find_lexers, daemon=True).start()
    routes = [
        Route("/", ui.runs_page),
        Route("/runs/{run_id}", ui.run_page),
        Route("/compare", ui.compare_page),
        Route("/groups/{kind}/{key:path}", ui.group_page),  # a study's name may hold "/"
        Route("/pygments.css", ui.pygments_css),
        Route("/api", ui.api_index),
        Route("/api/stores", ui.api_stores),
        Route("/api/runs", ui.api_runs),
        Route("/api/runs/{run_id}", ui.api_run),
        Route("/api/runs/{run_id}", ui.api_edit, methods=["PATCH"]),
        Route("/api/runs/{run_id}", ui.api_delete, methods=["DELETE"]),
        Route("/api/runs/{run_id}/metrics", ui.api_metrics),
        Route("/api/runs/{run_id}/output", ui.api_output),
        Route("/api/runs/{run_id}/artifacts/{name:path}", ui.api_artifact),
        Route("/api/runs/{run_id}/sources/{name:path}", ui.api_source),
        Route("/api/runs/{run_id}/resources", ui.api_resource),
        Route("/api/compare", ui.api_compare),
        Route("/api/groups", ui.api_groups),
        Route("/api/groups/{kind}/{key:path}", ui.api_group),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers = {
        UsageError: ui.error(400),
        KeyError: ui.error(404),
        _Refused: ui.error(None),
        ExpkitError: ui.error(503),
        OSError: ui.error(503),
        HTTPException: ui.error(None),
    }
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    return Guard(app, token, loopback, port)


class _UI:
    """The endpoints, over the stores and the server's settings."""

    def __init__(
        self, stores: list[StoreView], token: str, allow_delete: bool, beat: float
    ) -> None:
        self.stores = stores
        self.token = token
        self.allow_delete = allow_delete
        self.beat = beat
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["json"] = _json_text
        env.policies["json.dumps_function"] = strict_json  # for |tojson
        env.filters["quote"] = lambda value: quote(str(value), safe="")
        env.filters["num"] = _number_text
        env.tests["nonfinite"] = _is_nonfinite
        self.templates = Jinja2Templates(env=env)
        self._pygments_css: str | None = None
        self._highlighted = _Kept(KEPT_HIGHLIGHTED)

    # --- pages --------------------------------------------------------------------------

    def runs_page(self, request: Request) -> Response:
        store = self._store(request)
        return self._render(request, "runs.html", store, title=f"runs in {store.url}")

    def run_page(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        detail = views.run_detail(store, record, utcnow(), self.beat, self.allow_delete)
        sources = [self._source_view(store, record, name) for name in detail["sources"]]
        for source in sources:  # the main file is shown open
            # The main file's path from the base dir; runs of before recorded its name only.
            main = detail["mainfile"]
            source["main"] = main in (source["name"], source["name"].rsplit("/", 1)[-1])
        return self._render(
            request,
            "run.html",
            store,
            title=f"run {record.id} of {record.experiment}",
            run=detail,
            sources=sources,
        )

    def compare_page(self, request: Request) -> Response:
        store = self._store(request)
        records = self._compared(request, store)
        report = views.comparison(store, records)
        diffs = [
            {"name": name, "against": other, "html": _highlight_diff(lines)}
            for name, by_run in report["sources"].items()
            for other, lines in by_run.items()
        ]
        ids = ", ".join(str(i) for i in report["runs"])
        return self._render(
            request, "compare.html", store, title=f"runs {ids}", report=report, diffs=diffs
        )

    def group_page(self, request: Request) -> Response:
        store = self._store(request)
        kind, key = self._group_key(request)
        report = views.group_report(store, kind, key)
        return self._render(request, "group.html", store, title=f"{kind} {key}", group=report)

    def pygments_css(self, request: Request) -> Response:
        if self._pygments_css is None:
            with _PYGMENTS:
                from pygments.formatters import HtmlFormatter

                self._pygments_css = HtmlFormatter(style="default").get_style_defs(".highlight")
        return Response(self._pygments_css, media_type="text/css")

    # --- the API ------------------------------------------------------------------------

    def api_index(self, request: Request) -> Response:
        return _JSONResponse({"endpoints": API_DOC})

    def api_stores(self, request: Request) -> Response:
        return _JSONResponse(
            [
                {
                    "index": s.index,
                    "url": s.url,
                    "editable": s.editable,
                    "runs": len(s.listing().records),
                }
                for s in self.stores
            ]
        )

    def api_runs(self, request: Request) -> Response:
        store = self._store(request)
        params = request.query_params
        where = [f for text in params.getlist("where") for f in views.split_filters(text)]
        query = views.RunQuery(
            where=tuple(where),
            status=tuple(s for text in params.getlist("status") for s in text.split(",") if s),
            experiment=params.get("experiment") or None,
            sort=params.get("sort") or "start_time",
            descending=params.get("desc", "1") not in ("0", "false", ""),
            grouped=params.get("group", "1") not in ("0", "false", ""),
        )
        offset = _int(params, "offset", 0, 0, None)
        limit = _int(params, "limit", views.PAGE_SIZE, 1, views.MAX_PAGE_SIZE)
        return _JSONResponse(views.runs_page(store, query, offset, limit, utcnow(), self.beat))

    def api_run(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        detail = views.run_detail(store, record, utcnow(), self.beat, self.allow_delete)
        return _JSONResponse(detail, headers={"etag": f'"{detail["version"]}"'})

    async def api_edit(self, request: Request) -> Response:
        store = self._store(request)
        if not store.editable:
            raise _Refused(405, f"the reader of {store.url} cannot edit runs (it has no edit_run)")
        body = await request.body()
        if len(body) > MAX_EDIT_BYTES:
            raise _Refused(413, f"an edit is at most {MAX_EDIT_BYTES} bytes")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise UsageError('the body is not JSON: send {"comment": ..., "tags": [...]}') from None
        if not isinstance(data, dict) or not set(data) <= {"comment", "tags"}:
            raise UsageError('send a JSON object with "comment" and/or "tags"')
        comment = data.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise UsageError("comment must be a string")
        if comment is not None and len(comment) > MAX_COMMENT:
            raise UsageError(f"comment is longer than {MAX_COMMENT} characters")
        tags = views.parse_tags(data["tags"]) if data.get("tags") is not None else None
        run_id = request.path_params["run_id"]
        check = self._check(request, "edited")

        def edit() -> dict:
            record = store.edit(run_id, comment, tags, check)
            return {
                "id": to_data(record.id),
                "comment": record.meta.get("comment") or "",
                "tags": views.tags_of(record),
                "version": views.version_of(record),
            }

        return _JSONResponse(await run_in_threadpool(edit))

    async def api_delete(self, request: Request) -> Response:
        store = self._store(request)
        if not self.allow_delete:
            raise _Refused(
                403, "deleting runs is off: start `expkit ui --allow-delete` to allow it"
            )
        if not store.deletable:
            raise _Refused(405, f"the reader of {store.url} cannot delete runs")
        run_id = request.path_params["run_id"]
        check = self._check(request, "deleted")

        def delete() -> dict:
            store.delete(run_id, check)
            return {"deleted": run_id}

        return _JSONResponse(await run_in_threadpool(delete))

    def api_metrics(self, request: Request) -> Response:
        store = self._store(request)
        run_id = request.path_params["run_id"]
        params = request.query_params
        record = store.record(run_id)
        names = params.getlist("name") or sorted(record.metrics or {})
        width = _int(params, "width", 1000, 1, series.MAX_WIDTH)
        start, stop = _float(params, "start"), _float(params, "stop")
        result, missing = {}, []
        for name in names:
            if name not in (record.metrics or {}):
                missing.append(name)  # compared runs need not log the same metrics
                continue
            xs, ys = store.series(run_id, name, series.arrays_of)
            shown_x, shown_y = series.downsample(xs, ys, width, start, stop)
            result[name] = {
                "steps": series.as_list(shown_x),
                "values": shown_y.tolist(),
                "count": len(xs),
                "shown": len(shown_x),
                "nonfinite": _nonfinite(
                    store.series(run_id, name, series.nonfinite_of), start, stop
                ),
            }
        return _JSONResponse({"id": to_data(record.id), "metrics": result, "missing": missing})

    def api_output(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        raw = request.query_params.get("offset")
        offset = None if raw is None else _int(request.query_params, "offset", 0, 0, None)
        return _JSONResponse(views.output_chunk(record, offset, utcnow(), self.beat))

    def api_artifact(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        name = request.path_params["name"]
        # Only names the run lists: the reader is never handed a path a URL made up.
        if name not in record.artifacts:
            raise KeyError(f"run {record.id} has no artifact {name!r}")
        data = store.read_artifact(record.id, name)
        if request.query_params.get("preview"):
            return _JSONResponse(views.preview(data))
        kind = views.artifact_kind(name)
        content_type = mimetypes.guess_type(name)[0] if kind == "image" else None
        download = request.query_params.get("download") or kind != "image"
        return _file_response(data, name, content_type, download)

    def api_source(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        name = request.path_params["name"]
        if name not in source_names(record):
            raise KeyError(f"run {record.id} has no source {name!r}")
        data = store.read_source(record.id, name)
        return _JSONResponse({"name": name, "text": data.decode("utf-8", errors="replace")})

    def api_resource(self, request: Request) -> Response:
        store = self._store(request)
        record = store.record(request.path_params["run_id"])
        path = request.query_params.get("path", "")
        if path not in {p for p, _ in record.resources}:
            raise KeyError(f"run {record.id} has no resource {path!r}")
        data = store.read_resource(record.id, path)
        return _file_response(data, posixpath.basename(path.replace("\\", "/")), None, True)

    def api_compare(self, request: Request) -> Response:
        store = self._store(request)
        return _JSONResponse(views.comparison(store, self._compared(request, store)))

    def api_groups(self, request: Request) -> Response:
        return _JSONResponse(views.groups(self._store(request)))

    def api_group(self, request: Request) -> Response:
        store = self._store(request)
        kind, key = self._group_key(request)
        return _JSONResponse(views.group_report(store, kind, key))

    # --- helpers ------------------------------------------------------------------------

    def error(self, status: int | None) -> Any:
        """An exception handler answering with ``status`` (or the exception's own)."""

        def handle(request: Request, exc: Exception) -> Response:
            code = status or getattr(exc, "status", None) or getattr(exc, "status_code", 500)
            message = _message(exc)
            if request.url.path.startswith("/api"):
                return _JSONResponse({"error": message}, status_code=code)
            context = {"title": f"{code}", "status": code, "message": message}
            return self._render(request, "error.html", None, status_code=code, **context)

        return handle

    def _render(
        self,
        request: Request,
        name: str,
        store: StoreView | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        context.update(
            token=self.token,
            stores=self.stores,
            store=store,
            allow_delete=self.allow_delete,
            token_header=TOKEN_HEADER,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def _store(self, request: Request) -> StoreView:
        raw = request.query_params.get("store", "0")
        last = len(self.stores) - 1
        # isdigit() holds for "²", which int() refuses: only the digits 0 to 9 make a number.
        if not (raw.isascii() and raw.isdigit()):
            raise UsageError(f"store={raw!r} is not a store's number: give 0 to {last}")
        if int(raw) > last:
            raise KeyError(f"no store {raw!r}: this server shows stores 0 to {last}")
        return self.stores[int(raw)]

    def _compared(self, request: Request, store: StoreView) -> list:
        ids = [i for text in request.query_params.getlist("run") for i in text.split(",") if i]
        if len(ids) < 2:
            raise UsageError("compare needs two or more runs: /compare?run=ID&run=ID")
        if len(ids) > 20:
            raise UsageError("compare at most 20 runs at a time")
        records: dict[str, RunRecord] = {}
        for run_id in ids:  # "1" and "01" are one run: compared once
            record = store.record(run_id)
            records.setdefault(str(record.id), record)
        if len(records) < 2:
            raise UsageError(
                f"compare needs two or more different runs, got only run {ids[0]}: "
                "/compare?run=ID&run=OTHER"
            )
        return list(records.values())

    def _group_key(self, request: Request) -> tuple[str, str]:
        kind = request.path_params["kind"]
        if kind not in ("sweep", "study"):
            raise KeyError(f"no group kind {kind!r}: sweep or study")
        return kind, request.path_params["key"]

    def _check(self, request: Request, what: str) -> Any:
        """The check of a run just before it is ``what`` (edited, deleted): refused if it
        runs, or if it changed since the page that asks saw it (``If-Match: VERSION``)."""
        expected = request.headers.get("if-match", "").strip()
        expected = expected.removeprefix("W/").strip('"')

        def check(record: RunRecord) -> None:
            self._refuse_running(record, what)
            if expected and expected != "*" and expected != views.version_of(record):
                raise _Refused(
                    409,
                    f"run {record.id} was changed since this page was loaded (by another "
                    "page or command): reload the page to see it, then make your change again",
                )

        return check

    def _refuse_running(self, record: RunRecord, what: str) -> None:
        # The run's own heartbeat interval: one started with a longer interval than this
        # server's setting is not dead for missing the server's three beats.
        if record.status != "RUNNING" or views.is_probably_dead(record, utcnow(), self.beat):
            return
        beat = views.beat_of(record, self.beat)
        every = f"every {beat:g} s" if beat is not None else "only at its end"
        raise _Refused(
            409,
            f"run {record.id} is running (it beats {every}): it can be {what} once it has "
            "ended or missed three heartbeats (its process rewrites its record until then)",
        )

    def _source_view(self, store: StoreView, record: RunRecord, name: str) -> dict:
        # An ended run's sources are as they will stay; a running one's record may change.
        # The start time tells a run from a later one given the id of a deleted one.
        key = (store.index, str(record.id), to_data(record.start_time), name)
        ended = record.status in FINAL_STATUSES
        kept = self._highlighted.get(key) if ended else None
        if kept is not None:
            return dict(kept)
        try:
            text = store.read_source(record.id, name).decode("utf-8", errors="replace")
        except (KeyError, ExpkitError, OSError) as exc:
            return {"name": name, "error": _message(exc), "html": None, "lines": 0}
        html = _highlight(name, text)  # outside the reader's lock: other requests go on
        view = {"name": name, "error": None, "html": html, "lines": text.count("\n") + 1}
        if ended:
            self._highlighted.put(key, view, len(html))
        return dict(view)


class _Kept:
    """Values kept up to a total size; the least recently used go first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._values: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self._size = 0

    def get(self, key: Any) -> Any:
        """The value kept under ``key``, or ``None``."""
        with self._lock:
            kept = self._values.get(key)
            if kept is None:
                return None
            self._values.move_to_end(key)
            return kept[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        """Keep ``value`` (of ``size``) under ``key``; one larger than the limit is not kept."""
        if size > self.limit:
            return
        with self._lock:
            old = self._values.pop(key, None)
            self._size += size - (old[1] if old else 0)
            self._values[key] = (value, size)
            while self._size > self.limit:
                _, (_, dropped) = self._values.popitem(last=False)
                self._size -= dropped


def _highlight(name: str, text: str) -> Markup:
    """``text`` as highlighted HTML (Pygments escapes every character of it)."""
    with _PYGMENTS:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import TextLexer, get_lexer_for_filename
        from pygments.util import ClassNotFound

        lexer: Any = TextLexer()
        if len(text) <= MAX_HIGHLIGHTED:
            try:
                lexer = get_lexer_for_filename(name, stripnl=False)
            except ClassNotFound:
                pass
        return Markup(highlight(text, lexer, HtmlFormatter(linenos="table")))


# Pygments loads its lexers, formatters and styles lazily into module-level caches, which
# are not safe from two threads at once: the warm-up below and a page's first highlighting
# raced into 500s ("cannot import name 'HtmlFormatter'", about 1 run in 30). Every use of
# Pygments holds this lock; it costs no parallelism, Pygments being pure Python.
_PYGMENTS = threading.Lock()


def _find_lexers() -> None:
    with _PYGMENTS:
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_for_filename

        get_lexer_for_filename("warm-up.py")
        HtmlFormatter(linenos="table")


def _highlight_diff(lines: list[str]) -> Markup:
    with _PYGMENTS:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import DiffLexer

        return Markup(highlight("\n".join(lines) + "\n", DiffLexer(), HtmlFormatter()))


MAX_GAPS = 1000  # NaN and infinite points of a chart's range sent, to break its line at


def _nonfinite(points: tuple, start: float | None, stop: float | None) -> dict:
    """The points of a series no chart can draw (NaN, inf, -inf): how many of each in all,
    and those of the range ``start``-``stop`` (steps, values as text), where the chart
    breaks its line and says so instead of drawing across them."""
    xs, ys = points
    window = (xs >= (-math.inf if start is None else start)) & (
        xs <= (math.inf if stop is None else stop)
    )
    steps, values = xs[window][:MAX_GAPS], ys[window][:MAX_GAPS]
    return {
        "counts": series.nonfinite_counts(ys),
        "steps": series.as_list(steps),
        "values": [_float_text(float(v)) for v in values],
    }


def _file_response(data: bytes, name: str, content_type: str | None, download: Any) -> Response:
    filename = posixpath.basename(name) or "file"
    disposition = "attachment" if download else "inline"
    headers = {
        "content-disposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
        "content-security-policy": ARTIFACT_POLICY,
    }
    media_type = content_type if content_type and not download else "application/octet-stream"
    return Response(data, media_type=media_type, headers=headers)


def _json_text(value: Any) -> str:
    """JSON text of ``value`` for a page (autoescaped where it is put); NaN and infinities
    as Python writes them (NaN, Infinity), text for people, not for a parser."""
    data = to_data(value)
    if isinstance(data, float) and not math.isfinite(data):
        return _float_text(data)
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def _number_text(value: Any) -> str:
    """A metric's number with six significant digits, anything else as JSON."""
    if isinstance(value, float):
        return _float_text(value)
    return "" if value is None else _json_text(value)


def _is_nonfinite(value: Any) -> bool:
    """For the templates: a NaN or an infinity, shown marked as a number."""
    return isinstance(value, float) and not math.isfinite(value)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


def _int(params: Any, name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        upper = f" and {high}" if high is not None else ""
        raise UsageError(f"{name}={value} is out of range: between {low}{upper}")
    return value


def _float(params: Any, name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None
