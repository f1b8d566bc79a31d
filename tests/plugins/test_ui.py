"""``expkit ui``: the command, its JSON API and its guards, on a real server in a child process
over stores of real runs. The pages themselves are tested in a browser in test_ui_browser.py."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cli_helpers import fresh_python, run_expkit, write_project
from mixed_store import record_mixed
from ui_helpers import UiServer, big_run, make_runs

from expkit_plugins.file_store import FileStoreReader
from expkit_plugins.ui import series, views

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ui-api")
    ids = make_runs(root / "runs", root / "work")
    ids["big"] = big_run(root / "runs", 100_000)
    return root / "runs", ids


@pytest.fixture(scope="module")
def server(store: tuple[Path, dict]) -> UiServer:
    path, _ = store
    with UiServer("--store", str(path), cwd=path.parent) as running:
        yield running


# --- the command ----------------------------------------------------------------------------


def test_without_the_extra_it_says_which_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the extra were not installed\n"
        "import expkit\n"
        "sys.exit(expkit.main(['ui', '--store', sys.argv[1]]))\n"
    )
    (tmp_path / "runs").mkdir()
    done = __import__("subprocess").run(
        [sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "ERROR: expkit ui needs the extra 'ui' (starlette missing): pip install 'expkit[ui]'"
    )


def test_other_commands_never_import_the_web_libraries(tmp_path):
    (tmp_path / "runs").mkdir()
    code = (
        "import sys, expkit\n"
        "expkit.main(['runs', 'list', '--store', sys.argv[1]])\n"
        "web = ('starlette', 'uvicorn', 'jinja2', 'pygments')\n"
        "print(sorted(m for m in web if m in sys.modules))\n"
    )
    out = fresh_python("-c", code, str(tmp_path / "runs"))
    assert out.splitlines()[-1] == "[]"


def test_a_store_that_does_not_exist_is_one_line_and_exit_4(tmp_path):
    done = run_expkit("ui", "--store", str(tmp_path / "nowhere"), "--port", "0", cwd=tmp_path)
    assert done.returncode == 4
    assert (
        done.stderr.strip()
        == f"ERROR: no file store at {tmp_path / 'nowhere'}: the folder does not exist"
    )


def test_a_port_in_use_is_one_line_and_exit_4(server, tmp_path):
    (tmp_path / "runs").mkdir()
    done = run_expkit(
        "ui", "--store", str(tmp_path / "runs"), "--port", str(server.port), cwd=tmp_path
    )
    assert done.returncode == 4
    assert done.stderr.startswith(f"ERROR: cannot listen on 127.0.0.1:{server.port}: ")
    assert "--port" in done.stderr


@pytest.mark.parametrize("port", ["70000", "99999", "65536", "-1"])
def test_a_port_out_of_range_is_one_line_and_exit_4(tmp_path, port):
    # The socket functions would take 70000 modulo 65536 and serve on 4464.
    (tmp_path / "runs").mkdir()
    args = ("ui", "--store", str(tmp_path / "runs"), "--port", port)
    done = run_expkit(*args, cwd=tmp_path, timeout=20)
    assert done.returncode == 4
    assert done.stderr.strip() == (
        f"ERROR: --port must be a number from 0 to 65535 (0: any free one), got {port}"
    )


def test_the_default_store_is_the_projects_runs_folder_and_ctrl_c_stops_it(tmp_path, store):
    path, _ = store
    write_project(tmp_path, {}, pyproject=f'store = "{path}"\n')
    with UiServer(cwd=tmp_path) as running:
        assert running.get_json("/api/stores")[0]["url"] == str(path)
        code, out, err = running.stop()
    assert (code, out.strip(), err) == (0, "expkit ui stopped", "")


def test_open_shows_the_page_in_the_browser(tmp_path, store):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    with UiServer(
        "--store", str(store[0]), "--open", cwd=tmp_path, env={"BROWSER": str(browser)}
    ) as ui:
        for _ in range(100):
            if opened.exists() and opened.read_text():
                break
            time.sleep(0.05)
        assert opened.read_text().strip() == ui.url + "/"


def test_compare_shows_how_the_sources_differ(tmp_path):
    experiment = (
        "from expkit import Experiment\n"
        "ex = Experiment('diffed')\n"
        "@ex.automain\n"
        "def main():\n"
        "    return {}\n"
    )
    write_project(tmp_path, {"exp_diffed.py": experiment.format(1)})
    assert run_expkit("run", "exp_diffed.py", cwd=tmp_path).returncode == 0
    write_project(tmp_path, {"exp_diffed.py": experiment.format(2)})
    assert run_expkit("run", "exp_diffed.py", cwd=tmp_path).returncode == 0
    with UiServer(cwd=tmp_path) as ui:
        report = ui.get_json("/api/compare?run=1&run=2")
        assert report["results"] == [1, 2]
        diff = report["sources"]["exp_diffed.py"]["2"]
        assert "-    return 1" in diff and "+    return 2" in diff
        status, _, page = ui.request("GET", "/compare?run=1&run=2")
        assert status == 200
        assert b'<span class="gd">-    return 1</span>' in page
        assert b'<span class="gi">+    return 2</span>' in page


# --- loopback by default; a token anywhere else ---------------------------------------------------


def test_it_listens_on_loopback_only_by_default(server):
    assert server.lines[-1].startswith(f"serving on http://127.0.0.1:{server.port}/ ")
    listening = _listening_addresses(server.port)
    assert listening == {"127.0.0.1"}, listening


def test_a_request_naming_another_host_is_refused(server):
    # A page on evil.example whose name was rebound to 127.0.0.1 sends this Host header.
    status, _, body = server.request(
        "GET", "/api/runs", headers={"Host": f"evil.example:{server.port}"}
    )
    assert status == 403
    assert b"only loopback" in body
    assert (
        server.request("GET", "/api/runs", headers={"Host": f"localhost:{server.port}"})[0] == 200
    )


def test_another_address_needs_the_printed_token(store, tmp_path):
    path, _ = store
    with UiServer("--store", str(path), "--host", "0.0.0.0", cwd=tmp_path) as running:
        assert running.token, running.lines
        assert any(f"/?token={running.token}" in line for line in running.lines)
        for target in ("/", "/api/runs", "/api/runs/1", "/static/style.css", "/runs/1"):
            status, _, body = running.request("GET", target)
            assert status == 403, target
            assert b"access token" in body
        assert running.request("GET", "/?token=wrong")[0] == 403
        assert running.request("GET", "/api/runs", headers={"Cookie": "x=1"})[0] == 403
        # The token once in the address: a cookie, and the page again without it.
        status, headers, _ = running.request("GET", f"/runs/1?store=0&token={running.token}")
        assert status == 303
        assert headers["location"] == "/runs/1?store=0"
        cookie = headers["set-cookie"].split(";")[0]
        assert cookie == f"expkit-ui-token-{running.port}={running.token}"
        assert "httponly" in headers["set-cookie"].lower()
        assert "samesite=strict" in headers["set-cookie"].lower()
        assert running.request("GET", "/runs/1", headers={"Cookie": cookie})[0] == 200
        assert running.request("GET", "/api/runs", headers={"Cookie": cookie})[0] == 200
        auth = {"Authorization": f"token {running.token}"}
        assert running.request("GET", "/api/runs", headers=auth)[0] == 200


# --- the runs table -----------------------------------------------------------------------------


def test_runs_are_listed_filtered_sorted_and_paged(server, store):
    _, ids = store
    everything = server.get_json("/api/runs?group=0&limit=500")
    assert everything["total"] == everything["all"] == 11
    assert {r["id"] for r in everything["rows"]} == {
        *ids["plain"],
        ids["failed"],
        *ids["sweep"],
        *ids["study"],
        ids["big"],
    }
    page = server.get_json("/api/runs?where=C>1&sort=C&desc=0&group=0")
    assert [r["config"]["C"] for r in page["rows"]] == [2.0, 5.0, 10.0, 10.0]
    assert page["columns"] == ["C", "kernel", "seed"]  # steps is 200 everywhere: not shown
    two = server.get_json("/api/runs?where=C>1&sort=C&desc=0&group=0&limit=2&offset=2")
    assert [r["config"]["C"] for r in two["rows"]] == [10.0, 10.0]
    assert two["total"] == 4
    both = server.get_json("/api/runs?where=C>1,kernel==linear&group=0")
    assert [r["config"]["C"] for r in both["rows"]] == [2.0, 10.0]
    failed = server.get_json("/api/runs?status=FAILED")
    assert [r["id"] for r in failed["rows"]] == [ids["failed"]]
    assert server.get_json("/api/runs?experiment=lo*")["rows"][0]["id"] == ids["big"]


def test_a_wrong_filter_is_a_400_with_the_runs_list_message(server):
    status, _, body = server.request("GET", "/api/runs?where=C%3E%3E1")
    assert status == 400
    assert json.loads(body) == {
        "error": "wrong filter: C>>1: at column 3: unexpected '>' after '>'"
    }
    status, _, body = server.request("GET", "/api/runs?limit=none")
    assert (status, json.loads(body)) == (400, {"error": "limit='none' is not a whole number"})


# The web view and `expkit runs list` select with the same code: they must agree.


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-mixed") / "runs"
    record_mixed(str(path))
    return path


@pytest.fixture(scope="module")
def mixed_ui(mixed: Path) -> UiServer:
    with UiServer("--store", str(mixed), cwd=mixed.parent) as running:
        yield running


def test_a_sort_over_mixed_kinds_orders_runs_as_runs_list_does(mixed, mixed_ui):
    for desc, flags in (("0", ()), ("1", ("--descending",))):
        rows = mixed_ui.get_json(f"/api/runs?sort=result&desc={desc}&group=0&limit=500")["rows"]
        assert [r["id"] for r in rows] == _listed_ids(mixed, "--sort", "result", *flags)
        # Numbers, then text, then dicts, whichever the direction; the failed run last.
        kinds = [type(r["result"]).__name__ for r in rows]
        assert kinds == ["float"] * 7 + ["str"] * 2 + ["dict"] * 2 + ["NoneType"], desc


def test_an_experiment_file_picks_its_module_experiments_as_runs_list_does(mixed, mixed_ui):
    rows = mixed_ui.get_json("/api/runs?experiment=exp_svm.py&group=0")["rows"]
    assert [r["id"] for r in rows] == _listed_ids(mixed, "--experiment", "exp_svm.py")
    assert [r["experiment"] for r in rows] == ["exp_svm.py::exp_svm"] * 3


def test_a_mistyped_key_is_a_400_with_the_did_you_mean_of_runs_list(mixed, mixed_ui):
    listed = run_expkit("runs", "list", "--store", str(mixed), "penality==l1", cwd=mixed.parent)
    assert listed.returncode == 4
    message = listed.stderr.strip().removeprefix("ERROR: ")
    assert message == (
        "wrong filter: penality==l1: 'penality' is not a key of any of the 12 runs "
        "(did you mean 'penalty'?)"
    )
    status, _, body = mixed_ui.request("GET", "/api/runs?where=penality%3D%3Dl1")
    assert (status, json.loads(body)) == (400, {"error": message})


def _listed_ids(store: Path, *args: str) -> list[str]:
    """The run ids ``expkit runs list --json ARGS`` prints, in its order."""
    done = run_expkit("runs", "list", "--store", str(store), "--json", *args, cwd=store.parent)
    assert done.returncode == 0, done.stderr
    return [str(row["id"]) for row in json.loads(done.stdout)]


def test_sweeps_and_studies_are_grouped(server, store):
    _, ids = store
    rows = server.get_json("/api/runs?sort=id&desc=0")["rows"]
    groups = [(r["group"] or {}).get("key") for r in rows]
    # Each group's runs come together, where its first run is in the order.
    assert groups == [
        None,
        None,
        None,
        "sw1",
        "sw1",
        "sw1",
        "tune-svm",
        "tune-svm",
        "tune-svm",
        "tune-svm",
        None,
    ]
    assert rows[3]["group"] == {"kind": "sweep", "key": "sw1", "size": 3, "position": 0}
    assert [r["id"] for r in rows[3:6]] == ids["sweep"]
    listed = server.get_json("/api/groups")
    assert [(g["kind"], g["key"], g["runs"]) for g in listed] == [
        ("sweep", "sw1", 3),
        ("study", "tune-svm", 4),
    ]
    sweep = server.get_json("/api/groups/sweep/sw1")
    assert sweep["params"] == ["C"]
    assert [r["params"]["C"] for r in sweep["runs"]] == [0.1, 1.0, 10.0]
    assert sweep["objectives"] == ["result"]
    study = server.get_json("/api/groups/study/tune-svm")
    assert study["params"] == ["C", "kernel"]  # what varies, the seed left out
    assert [r["position"] for r in study["runs"]] == [0, 1, 2, 3]
    assert server.request("GET", "/api/groups/sweep/nope")[0] == 404


def test_a_real_sweep_is_grouped_with_its_parameters(tmp_path):
    experiment = """\
        from expkit import Experiment
        ex = Experiment("swept")
        @ex.config
        def cfg():
            C = 1.0
            kernel = "rbf"
        @ex.automain
        def main(C, kernel):
            return C * (2 if kernel == "rbf" else 1)
        """
    write_project(tmp_path, {"exp_swept.py": experiment})
    done = run_expkit(
        "run", "exp_swept.py", "--sweep", "C=0.1,10", "--sweep", "kernel=rbf,linear", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    with UiServer(cwd=tmp_path) as ui:
        (group,) = ui.get_json("/api/groups")
        assert (group["kind"], group["runs"]) == ("sweep", 4)
        sweep = ui.get_json(f"/api/groups/sweep/{group['key']}")
        assert sweep["params"] == ["C", "kernel"]
        points = {(r["params"]["C"], r["params"]["kernel"]): r["result"] for r in sweep["runs"]}
        assert points == {
            (0.1, "rbf"): 0.2,
            (0.1, "linear"): 0.1,
            (10.0, "rbf"): 20.0,
            (10.0, "linear"): 10.0,
        }
        assert [r["position"] for r in sweep["runs"]] == [0, 1, 2, 3]
        rows = ui.get_json("/api/runs")["rows"]
        assert {r["group"]["key"] for r in rows} == {group["key"]}


# --- a run ------------------------------------------------------------------------------------


def test_a_run_has_everything_but_output_and_metric_values(server, store):
    _, ids = store
    run = server.get_json(f"/api/runs/{ids['plain'][0]}")
    assert (run["experiment"], run["status"], run["result"]) == ("svm", "COMPLETED", 0.85)
    config = {e["key"]: e for e in run["config"]}
    assert config["C"]["doc"] == "the inverse of the regularisation strength"
    assert config["kernel"] == {"key": "kernel", "value": "rbf", "doc": "rbf, linear or poly"}
    assert [m["name"] for m in run["metrics"]] == ["accuracy", "loss"]
    assert run["metrics"][1]["count"] == 200
    assert run["artifacts"] == [
        {"name": "notes.txt", "kind": "text"},
        {"name": "confusion.png", "kind": "image"},
    ]
    assert run["mainfile"] == "ui_helpers.py" and "ui_helpers.py" in run["sources"]
    source = server.get_json(f"/api/runs/{ids['plain'][0]}/sources/ui_helpers.py")
    assert "def make_runs(" in source["text"]
    assert run["rerun"] == f"expkit rerun {ids['plain'][0]} --store {store[0]}"
    assert run["meta"]["options"] == {"--capture": "sys"}  # only the options that were set
    assert "config_docs" not in run["meta"] and run["meta"]["config_updates"]["kernel"] == "rbf"
    status, _, body = server.request("GET", "/api/runs/999")
    assert (status, json.loads(body)) == (404, {"error": f"no run '999' in {store[0]}"})
    status, _, body = server.request("GET", "/runs/999")
    assert status == 404 and f"no run &#39;999&#39; in {store[0]}".encode() in body


def test_an_ended_runs_sources_are_highlighted_once_a_running_runs_every_time(
    tmp_path, monkeypatch
):
    highlighted = _count_highlighting(monkeypatch)
    store = _ended_and_running(tmp_path)
    with _served_here(store) as url:
        for _ in range(2):
            assert HIGHLIGHTED_MAIN in _page(f"{url}/runs/1")
        assert highlighted == ["exp_shown.py"]  # the run has ended: highlighted once
        for _ in range(2):
            assert HIGHLIGHTED_MAIN in _page(f"{url}/runs/2")
        assert highlighted == ["exp_shown.py"] * 3  # still running: highlighted each time


def test_highlighted_sources_are_kept_up_to_a_size(tmp_path, monkeypatch):
    from expkit_plugins.ui import app

    monkeypatch.setattr(app, "KEPT_HIGHLIGHTED", 100)  # less than the source's HTML
    highlighted = _count_highlighting(monkeypatch)
    store = _ended_and_running(tmp_path)
    with _served_here(store) as url:
        for _ in range(2):
            assert HIGHLIGHTED_MAIN in _page(f"{url}/runs/1")
    assert highlighted == ["exp_shown.py"] * 2


HIGHLIGHTED_MAIN = b'<span class="k">def</span><span class="w"> </span><span class="nf">main'


# The server warms Pygments up in a thread as it starts, while the first pages highlight.
_HIGHLIGHT_AT_ONCE = """
import threading
from expkit_plugins.ui import app

errors = []
start = threading.Barrier(4)

def highlight(i):
    start.wait()
    try:
        if i == 0:
            app._find_lexers()
        elif i == 1:
            app._highlight_diff(["-a = 1", "+a = 2"])
        else:
            app._highlight(f"exp_{i}.py", "a = 1\\n")
    except Exception as error:
        errors.append(repr(error))

threads = [threading.Thread(target=highlight, args=(i,)) for i in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""


def test_sources_are_highlighted_while_pygments_warms_up_in_another_thread():
    # A fresh interpreter each time: Pygments' lazy caches must start empty to race. Before
    # the lock, about 2 of 3 such starts failed ("cannot import name 'HtmlFormatter'").
    for _ in range(3):
        assert fresh_python("-c", _HIGHLIGHT_AT_ONCE).strip() == "[]"


def _count_highlighting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the sources the web view highlights from now on, one per time."""
    from expkit_plugins.ui import app

    names: list[str] = []
    real = app._highlight

    def counted(name, text):
        names.append(name)
        return real(name, text)

    monkeypatch.setattr(app, "_highlight", counted)
    return names


def _ended_and_running(root: Path) -> Path:
    """A store of two runs of exp_shown.py: 1 has ended, 2 is running; its path."""
    from expkit.serialize import format_time, utcnow

    experiment = (
        "from expkit import Experiment\n"
        "ex = Experiment('shown')\n"
        "@ex.automain\n"
        "def main():\n"
        "    return 1\n"
    )
    write_project(root, {"exp_shown.py": experiment})
    for _ in range(2):
        assert run_expkit("run", "exp_shown.py", cwd=root).returncode == 0
    entry = json.loads((root / "runs" / "2" / "run.json").read_text())
    entry.update(status="RUNNING", heartbeat=format_time(utcnow()), stop_time=None)
    (root / "runs" / "2" / "run.json").write_text(json.dumps(entry))
    return root / "runs"


@contextlib.contextmanager
def _served_here(store: Path) -> Iterator[str]:
    """The web view of ``store`` served by uvicorn in this process (so that a test can see
    what it calls); its address."""
    import uvicorn

    from expkit_plugins.ui.app import create_app
    from expkit_plugins.ui.stores import StoreView

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    view = StoreView(0, str(store), FileStoreReader(store))
    application = create_app([view], token="t", loopback=True, port=port)
    server = uvicorn.Server(uvicorn.Config(application, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _page(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_output_comes_in_pieces_from_an_offset(server, store):
    _, ids = store
    run_id = ids["plain"][0]
    whole = server.get_json(f"/api/runs/{run_id}/output")
    assert whole["offset"] == 0
    assert "training an SVM with C=1.0 and a rbf kernel" in whole["text"]
    rest = server.get_json(f"/api/runs/{run_id}/output?offset=10")
    assert rest["text"] == whole["text"][10:]
    assert rest["next"] == rest["size"] == len(whole["text"])
    beyond = server.get_json(f"/api/runs/{run_id}/output?offset=100000")
    assert beyond["reset"] and beyond["text"] == whole["text"]


def test_a_long_series_is_cut_to_the_chart_width_keeping_its_extremes(server, store):
    _, ids = store
    data = server.get_json(f"/api/runs/{ids['big']}/metrics?name=signal&width=500")
    signal = data["metrics"]["signal"]
    assert signal["count"] == 100_000
    assert 1000 <= signal["shown"] <= 4 * 500
    values = FileStoreReader(store[0]).get_run(ids["big"]).metrics["signal"]["values"]
    assert max(signal["values"]) == max(values)
    assert min(signal["values"]) == min(values)
    assert signal["steps"][0] == 0 and signal["steps"][-1] == 99_999
    zoomed = server.get_json(
        f"/api/runs/{ids['big']}/metrics?name=signal&width=500&start=1000&stop=1200"
    )
    steps = zoomed["metrics"]["signal"]["steps"]
    assert steps == list(range(999, 1202))  # every point of the range, one either side


def test_m4_keeps_first_last_lowest_and_highest_of_every_column():
    import numpy as np

    xs = np.arange(10_000, dtype=float)
    ys = np.sin(xs / 37.0) * (1 + xs / 1000)
    shown_x, shown_y = series.downsample(xs, ys, width=100)
    assert len(shown_x) <= 400
    edges = np.linspace(0, 9999, 101)
    edges[-1] += 1
    for column in range(100):
        inside = (xs >= edges[column]) & (xs < edges[column + 1])
        picked = (shown_x >= edges[column]) & (shown_x < edges[column + 1])
        assert shown_x[picked][0] == xs[inside][0] and shown_x[picked][-1] == xs[inside][-1]
        assert ys[inside].max() == shown_y[picked].max()
        assert ys[inside].min() == shown_y[picked].min()
    assert list(series.as_arrays([2, 1, 3], [20, None, "x"])[0]) == [2.0]


def test_artifacts_are_served_and_no_path_leaves_the_run(server, store):
    path, ids = store
    run_id = ids["plain"][0]
    status, headers, body = server.request("GET", f"/api/runs/{run_id}/artifacts/confusion.png")
    assert (status, headers["content-type"], body[:4]) == (200, "image/png", b"\x89PNG")
    assert headers["content-security-policy"].startswith("sandbox")
    status, headers, body = server.request("GET", f"/api/runs/{run_id}/artifacts/notes.txt")
    assert status == 200 and body.startswith(b"accuracy by class")
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''notes.txt"
    preview = server.get_json(f"/api/runs/{run_id}/artifacts/notes.txt?preview=1")
    assert preview == {
        "text": "accuracy by class\nsetosa 1.0\nversicolor 0.93\n",
        "binary": False,
        "size": 45,
        "truncated": False,
    }
    secret = (path / run_id / "run.json").read_bytes()[:40]
    for name in (
        "run.json",
        "../1/run.json",
        "..%2F..%2Fui-api0%2Fwork%2Fnotes.txt",
        "%2E%2E/%2E%2E/work/notes.txt",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "notes.txt/../run.json",
        "notes.txt%00.png",
    ):
        status, _, body = server.request("GET", f"/api/runs/{run_id}/artifacts/{name}")
        assert status == 404, name
        assert secret not in body and b"root:" not in body
    status, _, body = server.request("GET", f"/api/runs/{run_id}/sources/..%2F..%2Fetc%2Fpasswd")
    assert status == 404 and b"root:" not in body
    status, _, body = server.request("GET", f"/api/runs/{run_id}/resources?path=/etc/passwd")
    assert status == 404 and b"root:" not in body


def test_every_answer_carries_the_safety_headers(server):
    status, headers, _ = server.request("GET", "/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert (
        "unsafe-inline"
        not in headers["content-security-policy"].split("script-src")[1].split(";")[0]
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert server.request("GET", "/api/runs")[1]["cache-control"] == "no-store"


def test_compare_shows_config_result_and_source_differences(server, store):
    _, ids = store
    a, b = ids["plain"]
    report = server.get_json(f"/api/compare?run={a}&run={b}")
    assert report["runs"] == [a, b]
    assert report["config"]["C"] == {a: 1.0, b: 10.0}  # as `expkit runs diff --json`
    assert report["config"]["kernel"] == {a: "rbf", b: "linear"}
    table = {row["key"]: row for row in report["config_table"]}
    assert table["steps"] == {
        "key": "steps",
        "values": [200, 200],
        "present": [True, True],
        "differs": False,
    }
    assert report["results"] == [0.85, 0.9727]
    assert report["metric_names"] == ["accuracy", "loss"]
    assert report["sources"] == {}
    status, _, body = server.request("GET", f"/api/compare?run={a}")
    assert status == 400 and b"two or more runs" in body


# --- editing and deleting ---------------------------------------------------------------------


def test_edits_need_the_pages_origin_and_token(server, store):
    path, ids = store
    run_id = ids["plain"][1]
    edit = {"comment": "best so far", "tags": ["baseline", " paper ", "baseline"]}
    target = f"/api/runs/{run_id}"
    good = server.write_headers()
    assert server.request("PATCH", target, edit)[0] == 403  # no origin, no token
    assert (
        server.request("PATCH", target, edit, {"X-Expkit-Token": good["X-Expkit-Token"]})[0] == 403
    )
    assert (
        server.request("PATCH", target, edit, {**good, "Origin": "http://evil.example"})[0] == 403
    )
    assert server.request("PATCH", target, edit, {**good, "X-Expkit-Token": "guess"})[0] == 403
    assert "comment" not in json.loads((path / run_id / "run.json").read_text())["meta"]
    status, _, body = server.request("PATCH", target, edit, good)
    assert status == 200, body
    answer = json.loads(body)
    assert answer == {
        "id": run_id,
        "comment": "best so far",
        "tags": ["baseline", "paper"],
        "version": answer["version"],
    }
    meta = json.loads((path / run_id / "run.json").read_text())["meta"]
    assert (meta["comment"], meta["tags"]) == ("best so far", ["baseline", "paper"])
    listed = {r.id: r for r in FileStoreReader(path).list_runs()}
    assert listed[run_id].meta["tags"] == ["baseline", "paper"]  # the index knows it too
    row = server.get_json(f"/api/runs?where=id=={run_id}")["rows"][0]
    assert (row["comment"], row["tags"]) == ("best so far", ["baseline", "paper"])
    assert server.request("PATCH", target, {"tags": 3}, good)[0] == 400
    assert server.request("PATCH", target, {"owner": "x"}, good)[0] == 400
    assert server.request("PATCH", target, {"comment": ""}, good)[0] == 200
    assert "comment" not in json.loads((path / run_id / "run.json").read_text())["meta"]


def test_deleting_is_off_unless_allowed(server, store):
    path, ids = store
    status, _, body = server.request(
        "DELETE", f"/api/runs/{ids['failed']}", headers=server.write_headers()
    )
    assert status == 403 and b"--allow-delete" in body
    assert (path / ids["failed"]).is_dir()


def test_a_running_run_is_not_edited_but_a_dead_one_is(tmp_path):
    store = tmp_path / "runs"
    ids = make_runs(store, tmp_path / "work")
    running, dead = ids["plain"]
    from expkit.serialize import format_time, utcnow

    for run_id, beat in ((running, utcnow()), (dead, utcnow().replace(year=2020))):
        entry = json.loads((store / run_id / "run.json").read_text())
        entry.update(status="RUNNING", heartbeat=format_time(beat), stop_time=None)
        (store / run_id / "run.json").write_text(json.dumps(entry))
    with UiServer("--store", str(store), "--allow-delete", cwd=tmp_path) as ui:
        headers = ui.write_headers()
        status, _, body = ui.request("PATCH", f"/api/runs/{running}", {"comment": "x"}, headers)
        assert status == 409 and b"is running" in body
        assert ui.request("DELETE", f"/api/runs/{running}", headers=headers)[0] == 409
        assert ui.request("PATCH", f"/api/runs/{dead}", {"comment": "crashed"}, headers)[0] == 200
        assert ui.get_json(f"/api/runs/{dead}")["probably_dead"] is True
        assert ui.request("DELETE", f"/api/runs/{ids['failed']}", headers=headers)[0] == 200
        assert not (store / ids["failed"]).exists()
        assert ui.request("GET", f"/api/runs/{ids['failed']}")[0] == 404


def test_tags_and_filters_are_parsed_as_documented():
    assert views.parse_tags("a, b ,,a") == ["a", "b"]
    assert views.split_filters('C>1, name=="a,b"; x in [1, 2]') == [
        "C>1",
        'name=="a,b"',
        "x in [1, 2]",
    ]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                if width == 8:
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add(address)
    return found


# --- every store with a reader ------------------------------------------------------------------


def test_tinydb_sql_and_mongo_stores_are_shown_and_edited(tmp_path, mongo_url):
    from expkit import Experiment
    from expkit.pluginmanager import get_plugin_manager
    from expkit.run import store_for_url
    from expkit.runs import get_run

    urls = [f"tinydb://{tmp_path / 'db'}", f"sqlite:///{tmp_path / 'runs.db'}", mongo_url]
    for url in urls:
        ex = Experiment("elsewhere")
        ex.observers.append(store_for_url(get_plugin_manager(), url))
        ex.add_config(lr=0.5)

        @ex.main
        def main(lr, _run):
            print("stored elsewhere")
            _run.log_scalar("loss", lr, 0)
            _run.log_scalar("loss", lr / 2, 1)
            return lr

        ex.run(options={"--capture": "sys"})
    with UiServer(*(a for url in urls for a in ("--store", url)), cwd=tmp_path) as ui:
        stores = ui.get_json("/api/stores")
        assert [(s["index"], s["editable"], s["runs"]) for s in stores] == [
            (0, True, 1),
            (1, True, 1),
            (2, True, 1),
        ]
        assert "***" in stores[2]["url"]  # the password is not shown
        for index, url in enumerate(urls):
            row = ui.get_json(f"/api/runs?store={index}")["rows"][0]
            assert (row["experiment"], row["result"]) == ("elsewhere", 0.5)
            run_id = row["id"]
            metrics = ui.get_json(f"/api/runs/{run_id}/metrics?store={index}")["metrics"]
            assert metrics["loss"]["values"] == [0.5, 0.25]
            output = ui.get_json(f"/api/runs/{run_id}/output?store={index}")
            assert "stored elsewhere" in output["text"]
            status, _, body = ui.request("GET", f"/runs/{run_id}?store={index}")
            highlighted_def = (
                b'<span class="k">def</span><span class="w"> </span><span class="nf">main'
            )
            assert status == 200 and highlighted_def in body  # its source, from the store
            edit = {"comment": f"kept in store {index}", "tags": ["x"]}
            path = f"/api/runs/{run_id}?store={index}"
            assert ui.request("PATCH", path, edit, ui.write_headers())[0] == 200
            assert get_run(url, run_id).meta["comment"] == f"kept in store {index}"
        assert ui.request("GET", "/api/runs?store=3")[0] == 404


def test_nan_and_infinity_are_sent_as_json_a_browser_parses(tmp_path):
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("diverged")
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))
    ex.add_config(limit=float("inf"))

    @ex.main
    def main(_run):
        for step, loss in enumerate((1.0, float("inf"), float("nan"), 0.5)):
            _run.log_scalar("loss", loss, step)
        return float("nan")

    run_id = ex.run(options={"--capture": "sys"})._id

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    with UiServer("--store", str(tmp_path / "runs"), cwd=tmp_path) as ui:
        for path in ("/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/metrics"):
            status, _, body = ui.request("GET", path)
            assert status == 200, (path, body)
            strict(body)
        run = strict(ui.request("GET", f"/api/runs/{run_id}")[2])
        assert run["result"] == {"$number": "NaN"}
        assert run["config"][0] == {"key": "limit", "value": {"$number": "inf"}, "doc": ""}
        assert run["metrics"][0] == {
            "name": "loss",
            "count": 4,
            "last": 0.5,
            "min": 0.5,
            "max": {"$number": "inf"},
            "nonfinite": {"NaN": 1, "inf": 1},
        }
        metrics = strict(ui.request("GET", f"/api/runs/{run_id}/metrics")[2])["metrics"]
        assert metrics["loss"] == {
            "steps": [0, 3],
            "values": [1.0, 0.5],
            "count": 2,
            "shown": 2,
            "nonfinite": {
                "counts": {"NaN": 1, "inf": 1},
                "steps": [1, 2],
                "values": ["inf", "NaN"],
            },
        }
        page = ui.request("GET", f"/runs/{run_id}")[2].decode()
        data = page.split('<script type="application/json" id="run-data">')[1].split("</script>")[0]
        assert strict(data)["result"] == {"$number": "NaN"}


# --- what the tester found ---------------------------------------------------------------------


def _simple_run(
    store: Path,
    result: object = 1,
    config: dict | None = None,
    meta: dict | None = None,
    options: dict | None = None,
    metric: list | None = None,
) -> str:
    """One run in the file store ``store`` returning ``result``, logging ``metric`` (as
    ``loss``, one value a step); its id."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("simple")
    ex.observers.append(FileStorageObserver(store))
    ex.add_config(**(config or {"C": 1}))

    @ex.main
    def main(_run):
        for step, value in enumerate(metric or ()):
            _run.log_scalar("loss", value, step)
        return result

    run = ex.run(options={"--capture": "sys", **(options or {})}, meta_info=meta)
    return str(run._id)


def _rewrite(store: Path, run_id: str, change) -> None:
    """Change run ``run_id``'s run.json in place (as a crash or a hand edit leaves it)."""
    path = store / run_id / "run.json"
    entry = json.loads(path.read_text())
    change(entry)
    path.write_text(json.dumps(entry))


def test_a_run_that_beats_slower_than_the_servers_setting_is_not_taken_for_dead(tmp_path):
    # The run beats every 40 s (its project's setting); the server's is 10 s. A minute
    # without news is one and a half of the run's beats: it runs, and its process would
    # overwrite an edit (or recreate a deleted run) when it writes its end.
    from datetime import timedelta

    from expkit.serialize import format_time, utcnow

    store = tmp_path / "runs"
    slow = _simple_run(store, options={"--beat-interval": 40})
    gone = _simple_run(store, options={"--beat-interval": 40})
    for run_id, silent in ((slow, 60), (gone, 200)):
        stamp = format_time(utcnow() - timedelta(seconds=silent))

        def running(entry, stamp=stamp):
            entry.update(status="RUNNING", heartbeat=stamp, stop_time=None)

        _rewrite(store, run_id, running)
    with UiServer("--store", str(store), "--allow-delete", cwd=tmp_path) as ui:
        run = ui.get_json(f"/api/runs/{slow}")
        assert (run["probably_dead"], run["running"], run["beat_interval"]) == (False, True, 40)
        rows = {r["id"]: r for r in ui.get_json("/api/runs")["rows"]}
        assert (rows[slow]["probably_dead"], rows[gone]["probably_dead"]) == (False, True)
        dead = ui.get_json("/api/runs?status=PROBABLY_DEAD")["rows"]
        assert [r["id"] for r in dead] == [gone]
        headers = ui.write_headers()
        status, _, body = ui.request("PATCH", f"/api/runs/{slow}", {"comment": "x"}, headers)
        assert status == 409, body
        assert json.loads(body)["error"] == (
            f"run {slow} is running (it beats every 40 s): it can be edited once it has "
            "ended or missed three heartbeats (its process rewrites its record until then)"
        )
        assert ui.request("DELETE", f"/api/runs/{slow}", headers=headers)[0] == 409
        assert (store / slow / "run.json").exists()
        assert "comment" not in json.loads((store / slow / "run.json").read_text())["meta"]
        assert ui.get_json(f"/api/runs/{slow}/output")["beat_interval"] == 40
        page = ui.request("GET", f"/runs/{slow}")[2].decode()
        assert "(this run beats every 40 s)" in page
        # Three of its beats missed: probably dead, and editable.
        assert ui.request("PATCH", f"/api/runs/{gone}", {"comment": "died"}, headers)[0] == 200


def test_an_edit_made_against_a_run_changed_since_is_refused(tmp_path):
    store = tmp_path / "runs"
    run_id = _simple_run(store)
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        status, headers, body = ui.request("GET", f"/api/runs/{run_id}")
        seen = json.loads(body)["version"]
        assert headers["etag"] == f'"{seen}"'
        write = ui.write_headers()
        # Page A adds a tag; page B, loaded before, changes the comment only.
        first = {**write, "If-Match": f'"{seen}"'}
        status, _, body = ui.request("PATCH", f"/api/runs/{run_id}", {"tags": ["from-a"]}, first)
        assert status == 200, body
        assert json.loads(body)["version"] != seen
        status, _, body = ui.request("PATCH", f"/api/runs/{run_id}", {"comment": "from b"}, first)
        assert status == 409
        assert json.loads(body)["error"] == (
            f"run {run_id} was changed since this page was loaded (by another page or "
            "command): reload the page to see it, then make your change again"
        )
        meta = json.loads((store / run_id / "run.json").read_text())["meta"]
        assert meta["tags"] == ["from-a"] and "comment" not in meta
        # Sent alone, a comment leaves the tags as they are.
        fresh = {**write, "If-Match": ui.request("GET", f"/api/runs/{run_id}")[1]["etag"]}
        status, _, body = ui.request("PATCH", f"/api/runs/{run_id}", {"comment": "from b"}, fresh)
        assert status == 200, body
        meta = json.loads((store / run_id / "run.json").read_text())["meta"]
        assert (meta["comment"], meta["tags"]) == ("from b", ["from-a"])


def test_a_metric_that_blew_up_is_summarised_from_every_value_logged(tmp_path):
    store = tmp_path / "runs"
    values = [1 / (1 + step) for step in range(100)] + [float("inf")]
    values[50] = float("nan")
    run_id = _simple_run(store, metric=values)
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        (loss,) = ui.get_json(f"/api/runs/{run_id}")["metrics"]
        assert loss == {
            "name": "loss",
            "count": 101,
            "last": {"$number": "inf"},
            "min": 0.01,
            "max": {"$number": "inf"},
            "nonfinite": {"NaN": 1, "inf": 1},
        }
        page = ui.request("GET", f"/runs/{run_id}")[2].decode()
        row = page.split("<tr><td>loss</td>")[1].split("</tr>")[0]
        assert row == (
            '<td class="num">101</td><td class="num">inf</td>'
            '<td class="num">0.01</td><td class="num">inf</td>'
        )
        chart = ui.get_json(f"/api/runs/{run_id}/metrics?name=loss")["metrics"]["loss"]
        assert (chart["count"], chart["shown"]) == (99, 99)  # what a chart can draw
        assert chart["nonfinite"] == {
            "counts": {"NaN": 1, "inf": 1},
            "steps": [50, 100],
            "values": ["NaN", "inf"],
        }
        zoomed = ui.get_json(f"/api/runs/{run_id}/metrics?name=loss&start=0&stop=60")
        assert zoomed["metrics"]["loss"]["nonfinite"]["steps"] == [50]


def test_numbers_json_cannot_carry_are_sent_marked_and_shown_as_numbers(tmp_path):
    store = tmp_path / "runs"
    huge = 12345678901234567891
    number = _simple_run(store, result=float("nan"), config={"big": huge, "C": 1})
    text = _simple_run(store, result="nan", config={"big": 2, "C": 2})
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        rows = {r["id"]: r for r in ui.get_json("/api/runs")["rows"]}
        assert rows[number]["result"] == {"$number": "NaN"}
        assert rows[text]["result"] == "nan"  # a string stays one
        assert rows[number]["config"]["big"] == {"$number": str(huge)}
        assert rows[text]["config"]["big"] == 2
        page = ui.request("GET", f"/runs/{number}")[2].decode()
        assert '<pre class="inline" id="result"><span class="number"' in page
        assert ">NaN</span></pre>" in page
        assert f'<td class="value">{huge}</td>' in page  # the config table, exactly
        page = ui.request("GET", f"/runs/{text}")[2].decode()
        assert '<pre class="inline" id="result">nan</pre>' in page


def test_a_study_whose_name_holds_a_slash_has_its_page(tmp_path):
    store = tmp_path / "runs"
    name = "sub/exp_t.py::exp_t"
    run_id = _simple_run(store, meta={"study": {"name": name, "trial": 0}})
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        assert ui.get_json("/api/groups")[0]["key"] == name
        quoted = "sub%2Fexp_t.py%3A%3Aexp_t"
        assert ui.get_json(f"/api/groups/study/{quoted}")["key"] == name
        # The link the run's page makes to it leads there.
        page = ui.request("GET", f"/runs/{run_id}")[2].decode()
        link = f'href="/groups/study/{quoted}?store=0"'
        assert link in page
        status, _, body = ui.request("GET", f"/groups/study/{quoted}?store=0")
        assert status == 200, body[:300]
        assert f'<span class="run-id">{name}</span>' in body.decode()


def test_a_run_asked_for_by_another_spelling_of_its_id_is_one_run(tmp_path):
    store = tmp_path / "runs"
    run_id = _simple_run(store)
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        assert ui.get_json(f"/api/runs/{run_id}")["comment"] == ""  # kept for a while
        edit = {"comment": "edited as 01"}
        assert ui.request("PATCH", f"/api/runs/0{run_id}", edit, ui.write_headers())[0] == 200
        assert ui.get_json(f"/api/runs/{run_id}")["comment"] == "edited as 01"


def test_a_run_stored_under_a_deleted_runs_id_is_never_shown_or_edited_as_it(tmp_path):
    store = tmp_path / "runs"
    _simple_run(store)
    old = _simple_run(store, result="old")
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        seen = ui.get_json(f"/api/runs/{old}")  # kept: an ended run
        assert seen["result"] == "old"
        removed = run_expkit("runs", "rm", old, "--store", str(store), "--yes", cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        new = _simple_run(store, result="new")
        assert new == old
        assert ui.get_json(f"/api/runs/{new}")["result"] == "new"
        # An edit from the page of the deleted run does not land on the new one.
        headers = {**ui.write_headers(), "If-Match": f'"{seen["version"]}"'}
        status, _, body = ui.request("PATCH", f"/api/runs/{new}", {"comment": "old's"}, headers)
        assert status == 409 and b"reload the page" in body
        assert "comment" not in json.loads((store / new / "run.json").read_text())["meta"]


def test_a_damaged_or_partial_record_is_still_shown(tmp_path):
    store = tmp_path / "runs"
    run_id = _simple_run(store)
    other = _simple_run(store)

    def damaged(entry):
        entry["experiment"]["repositories"] = [{"commit": "abc"}, "not-a-dict"]

    _rewrite(store, run_id, damaged)
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        status, _, body = ui.request("GET", f"/runs/{run_id}")
        assert status == 200, body[:500]
        page = body.decode()
        assert "<code>(no url recorded)</code> @ <code>abc</code>" in page
        assert "<code>not-a-dict</code> @ <code>(no commit recorded)</code>" in page
        status, _, body = ui.request("GET", f"/compare?run={run_id}&run={other}")
        assert status == 200, body[:500]
        assert "<code> @ abc</code>" in body.decode()


def test_bad_input_is_400_absent_entries_show_absent_and_every_status_is_offered(tmp_path):
    store = tmp_path / "runs"
    first = _simple_run(store, config={"C": 1, "extra": None})
    second = _simple_run(store, config={"C": 2})
    with UiServer("--store", str(store), cwd=tmp_path) as ui:
        status, _, body = ui.request("GET", "/api/runs?store=%C2%B2")
        assert (status, json.loads(body)) == (
            400,
            {"error": "store='²' is not a store's number: give 0 to 0"},
        )
        status, _, body = ui.request("GET", f"/api/compare?run={first}&run=0{first}")
        assert (status, json.loads(body)) == (
            400,
            {
                "error": f"compare needs two or more different runs, got only run {first}: "
                "/compare?run=ID&run=OTHER"
            },
        )
        assert ui.request("GET", f"/compare?run={first}&run={first}")[0] == 400
        # An entry a run does not have is not shown as a null it would hold.
        page = ui.request("GET", f"/compare?run={first}&run={second}")[2].decode()
        row = page.split('<td class="key">extra</td>')[1].split("</tr>")[0]
        assert row == (
            '<td class="value">null</td><td class="value absent muted" '
            'title="this run has no such entry">(absent)</td>'
        )
        runs_page = ui.request("GET", "/")[2].decode()
        for status_name in ("TIMEOUT", "PRUNED"):
            assert f'<option value="{status_name}">{status_name}</option>' in runs_page
        status, _, body = ui.request("GET", "/api/runs?status=TIMEOUT,PRUNED")
        assert status == 200 and json.loads(body)["total"] == 0


def test_a_sqlite_database_that_does_not_exist_is_said_not_made(tmp_path):
    # A view only reads: a mistyped path must not become an empty database.
    missing = tmp_path / "missing.db"
    done = run_expkit("ui", "--store", f"sqlite:///{missing}", "--port", "0", cwd=tmp_path)
    assert (done.returncode, done.stderr.strip()) == (
        4,
        f"ERROR: no SQLite database at '{missing}': the file does not exist",
    )
    assert not missing.exists()
