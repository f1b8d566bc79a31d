"""``expkit ui`` in a real browser: Debian's headless Chromium driven by Playwright, against the
real server in a child process over stores of real runs.

With ``EXPKIT_UI_SCREENSHOTS=1`` the tests also save the screenshots shown in docs/ui.rst
(docs/_static/ui-*.png).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("playwright.sync_api")

from cli_helpers import EXPKIT, child_env, write_project
from playwright import sync_api
from ui_helpers import SCRIPT, XSS, UiServer, big_run, make_runs

CHROMIUM = "/usr/bin/chromium"
# Without the networking switches Chromium keeps calling hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "_static"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page; every dialog it opens (alert, confirm) is recorded and dismissed."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.dialogs = []
    opened.errors = []

    def on_dialog(dialog):
        opened.dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", on_dialog)
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    context.close()


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-browser")
    ids = make_runs(root / "runs", root / "work")
    ids["big"] = big_run(root / "runs", 100_000)
    with UiServer("--store", str(root / "runs"), cwd=root) as server:
        yield server, root / "runs", ids


def shoot(page, name: str, full_page: bool = False) -> None:
    """Save docs/_static/ui-NAME.png when EXPKIT_UI_SCREENSHOTS asks for it."""
    if os.environ.get("EXPKIT_UI_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"ui-{name}.png"), full_page=full_page)


def drawn_pixels(page, selector: str, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the canvas at ``selector`` have (about) colour ``rgb``."""
    return page.eval_on_selector(
        selector,
        """(canvas, rgb) => {
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 0 && Math.abs(data[i] - rgb[0]) < 40 &&
                    Math.abs(data[i + 1] - rgb[1]) < 40 && Math.abs(data[i + 2] - rgb[2]) < 40) n++;
            }
            return n;
        }""",
        list(rgb),
    )


# The C column of the runs table, top to bottom.
COLUMN_C = """(() => {
    const heads = [...document.querySelectorAll('#runs thead th')];
    const at = heads.findIndex(th => th.textContent.startsWith('C'));
    const rows = [...document.querySelectorAll('#runs tbody tr[data-id]')];
    return rows.map(r => r.cells[at].textContent);
})()"""


# The big column of the runs table, top to bottom.
COLUMN_BIG = COLUMN_C.replace("startsWith('C')", "startsWith('big')")


def ids_shown(page) -> list[str]:
    return page.eval_on_selector_all(
        "#runs tbody tr[data-id]", "rows => rows.map(r => r.dataset.id)"
    )


# --- the runs table -----------------------------------------------------------------------------


def test_the_runs_table_filters_sorts_and_groups(page, showcase):
    server, _, ids = showcase
    page.goto(server.url + "/")
    page.wait_for_function(
        "() => document.querySelectorAll('#runs tbody tr[data-id]').length === 11"
    )
    assert page.locator("#summary").inner_text().startswith("11 of 11 run(s)")
    groups = page.locator("#runs tr.group-row").all_inner_texts()
    assert [g.split("·")[0].split() for g in groups] == [["STUDY", "tune-svm"], ["SWEEP", "sw1"]]
    headers = page.locator("#runs thead th").all_inner_texts()
    assert headers[-4:] == ["seed", "C", "kernel", "steps"]  # the long run has no C
    shoot(page, "runs")

    page.fill("#where", "C>1, kernel==linear")
    page.press("#where", "Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('#runs tbody tr[data-id]').length === 2"
    )
    assert "where=C%3E1%2C+kernel%3D%3Dlinear" in page.url
    page.locator("#runs thead th.config", has_text="C").click()  # sort by C, largest first
    page.wait_for_function(f"() => ({COLUMN_C}).join() === '10,2'")
    page.locator("#runs thead th.config", has_text="C").click()  # and the other way
    page.wait_for_function(f"() => ({COLUMN_C}).join() === '2,10'")

    page.fill("#where", "C>>1")
    page.press("#where", "Enter")
    page.wait_for_selector("#filter-error:not([hidden])")
    assert (
        page.inner_text("#filter-error")
        == "wrong filter: C>>1: at column 3: unexpected '>' after '>'"
    )
    page.fill("#where", "kernal==rbf")  # a key no run has: the near miss, as runs list says
    page.press("#where", "Enter")
    page.wait_for_function(
        "() => document.getElementById('filter-error').textContent.includes('kernal')"
    )
    assert page.inner_text("#filter-error") == (
        "wrong filter: kernal==rbf: 'kernal' is not a key of any of the 11 runs "
        "(did you mean 'kernel'?)"
    )
    page.fill("#where", "")
    page.select_option("#status", "FAILED")
    page.wait_for_function(
        "() => document.querySelectorAll('#runs tbody tr[data-id]').length === 1"
    )
    assert ids_shown(page) == [ids["failed"]]
    assert page.errors == []


# --- a run --------------------------------------------------------------------------------------


def test_a_run_shows_charts_config_docs_artifacts_output_and_sources(page, showcase):
    server, _, ids = showcase
    page.goto(f"{server.url}/runs/{ids['plain'][0]}")
    page.wait_for_function("() => window.expkitRun && window.expkitRun.panels.every(p => p.plot)")
    charts = page.evaluate(
        "window.expkitRun.panels.map(p => [p.name, p.plot.series.length, p.plot.data[0].length])"
    )
    assert charts == [["accuracy", 2, 200], ["loss", 2, 200]]
    # The line is drawn: pixels of the series colour on the chart's canvas.
    assert drawn_pixels(page, "figure[data-metric=loss] canvas", (31, 119, 180)) > 200
    assert (
        page.locator("td.doc", has_text="the inverse of the regularisation strength").count() == 1
    )
    page.wait_for_function(
        "() => document.querySelector('img[alt=\"confusion.png\"]').naturalWidth === 160"
    )
    page.wait_for_function(
        "() => document.querySelector('pre.preview').textContent.includes('setosa')"
    )
    page.wait_for_function(
        "() => document.getElementById('captured-output').textContent.includes('training an SVM')"
    )
    shoot(page, "run")
    # The main file is open, the other sources are a click away.
    source = page.locator("details.source", has=page.locator("summary", has_text="ui_helpers.py"))
    assert source.get_attribute("open") is not None
    assert "def make_runs(" in source.locator(".highlight").inner_text()
    assert source.locator(".highlight .k", has_text="def").count() > 3  # highlighted keywords
    assert page.inner_text("#rerun") == f"expkit rerun {ids['plain'][0]} --store {showcase[1]}"
    names = page.locator("details.source:not([open]) summary").all_inner_texts()
    for name in names:  # whatever else the run recorded: a click away
        other = page.locator("details.source", has=page.locator("summary", has_text=name))
        other.locator("summary").click()
        assert other.get_attribute("open") is not None
        assert other.locator(".highlight .k").count() > 0
    assert page.dialogs == [] and page.errors == []


def test_the_smoothing_slider_redraws_every_chart_smoothed(page, showcase):
    server, _, ids = showcase
    page.goto(f"{server.url}/runs/{ids['plain'][0]}")
    page.wait_for_function("() => window.expkitRun && window.expkitRun.panels.every(p => p.plot)")
    raw = page.evaluate("window.expkitRun.panels.map(p => p.plot.data[1])")
    slider = page.get_by_label("smoothing")
    slider.fill("0.9")
    assert page.inner_text("label.smoothing span") == "0.9"
    page.wait_for_function(
        "raw => window.expkitRun.panels.every((p, i) => p.plot.data[1][5] !== raw[i][5])", arg=raw
    )
    smoothed = page.evaluate("window.expkitRun.panels.map(p => p.plot.data[1])")
    for before, after in zip(raw, smoothed):
        # An exponential moving average with its start debiased, as TensorBoard draws it.
        average, expected = 0.0, []
        for n, value in enumerate(before, start=1):
            average = 0.9 * average + 0.1 * value
            expected.append(average / (1 - 0.9**n))
        assert after == pytest.approx(expected)
    slider.fill("0")
    page.wait_for_function(
        "raw => window.expkitRun.panels.every((p, i) => p.plot.data[1][5] === raw[i][5])", arg=raw
    )
    assert page.errors == []


def test_a_run_shows_its_host_git_and_packages(page, showcase):
    import socket

    import expkit

    server, _, ids = showcase
    page.goto(f"{server.url}/runs/{ids['plain'][0]}")
    host = page.locator("#environment + table")
    assert host.locator("tr", has_text="hostname").inner_text().split() == [
        "hostname",
        socket.gethostname(),
    ]
    recorded = server.get_json(f"/api/runs/{ids['plain'][0]}")
    assert host.locator("tr", has_text="python_version").inner_text().split() == [
        "python_version",
        recorded["host"]["python_version"],
    ]
    # The tests' experiments live in expkit's checkout: the run names its commit (and a
    # copy of the sources outside any work tree says so).
    shown = page.locator("#environment ~ p code").all_inner_texts()
    for repo in recorded["git"]:
        assert repo["url"] in shown and repo["commit"] in shown
    if not recorded["git"]:
        assert page.locator("p.muted", has_text="not in a git work tree").count() == 1
    packages = page.locator("p.deps code").all_inner_texts()
    assert f"expkit=={expkit.__version__}" in packages


def test_a_long_series_is_drawn_cut_down_and_zooms_in_for_detail(page, showcase):
    server, _, ids = showcase
    page.goto(f"{server.url}/runs/{ids['big']}")
    page.wait_for_function("() => window.expkitRun && window.expkitRun.panels[0].plot")
    note = page.inner_text("figure[data-metric=signal] .chart-note")
    assert note.startswith("100000 points, ") and "drawn" in note
    shown = page.evaluate("window.expkitRun.panels[0].plot.data[0].length")
    width = page.evaluate("window.expkitRun.panels[0].width()")
    assert 500 < shown <= 4 * width
    box = page.locator("figure[data-metric=signal] .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.42, y, steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.expkitRun.panels[0].range !== null")
    page.wait_for_function(
        "() => document.querySelector('.chart-note').textContent.includes('zoom out')"
    )
    start, stop = page.evaluate("window.expkitRun.panels[0].range")
    steps = page.evaluate("window.expkitRun.panels[0].plot.data[0]")
    assert 38_000 < start < stop < 44_000
    # Zoomed in, every point of the range is there: steps one apart.
    assert steps[1] - steps[0] == 1 and len(steps) > stop - start
    page.dblclick("figure[data-metric=signal] .u-over")
    page.wait_for_function("() => window.expkitRun.panels[0].range === null")
    page.wait_for_function("() => window.expkitRun.panels[0].plot.data[0].at(-1) === 99999")


# --- comparing, sweeps and studies --------------------------------------------------------------


def test_two_runs_are_compared_from_the_table(page, showcase):
    server, _, ids = showcase
    a, b = ids["plain"]
    page.goto(server.url + "/?group=0&sort=id&desc=0")
    page.wait_for_selector(f"#runs tr[data-id='{a}']")
    page.check(f"#runs tr[data-id='{a}'] input[type=checkbox]")
    page.check(f"#runs tr[data-id='{b}'] input[type=checkbox]")
    page.click("#compare")
    page.wait_for_url(f"**/compare?store=0&run={a}&run={b}")
    rows = page.locator("#config-table tbody tr:visible")
    keys = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert keys == ["experiment", "status", "result", "C", "kernel", "seed"]  # steps is the same
    assert page.locator("#config-table tr", has_text="kernel").locator("td").all_inner_texts() == [
        "kernel",
        "rbf",
        "linear",
    ]
    page.uncheck("#only-differences")
    assert page.locator("#config-table tr:visible", has_text="steps").count() == 1
    page.check("#only-differences")
    page.wait_for_function("() => window.expkitCompare.panels.every(p => p.plot)")
    assert page.evaluate("window.expkitCompare.panels.map(p => p.plot.series.length)") == [3, 3]
    assert drawn_pixels(page, "figure[data-metric=loss] canvas", (214, 39, 40)) > 100  # run b
    shoot(page, "compare")
    assert page.errors == []


def test_a_sweep_plots_each_parameter_against_the_result(page, showcase):
    server, _, _ = showcase
    page.goto(server.url + "/groups/sweep/sw1")
    page.wait_for_selector("figure.scatter canvas")
    assert page.locator("figure.scatter").all_inner_texts()[0].startswith("C")
    assert drawn_pixels(page, "figure.scatter canvas", (31, 119, 180)) > 30  # the points
    assert (
        drawn_pixels(page, "canvas.parallel", (0, 0, 200))
        + drawn_pixels(page, "canvas.parallel", (200, 30, 30))
        > 50
    )
    assert page.locator("#group-runs tbody tr").count() == 3
    shoot(page, "sweep", full_page=True)
    page.goto(server.url + "/groups/study/tune-svm")
    page.wait_for_selector("figure.scatter canvas")
    assert [f.split("\n")[0] for f in page.locator("figure.scatter").all_inner_texts()] == [
        "C",
        "kernel",
    ]
    assert page.errors == []


# --- editing and deleting -----------------------------------------------------------------------


def test_a_comment_and_tags_edited_in_the_page_are_saved_in_the_store(page, showcase):
    server, path, ids = showcase
    run_id = ids["study"][0]
    page.goto(f"{server.url}/runs/{run_id}")
    page.fill("#comment", "the best trial so far")
    page.fill("#tags", "best\npaper")  # one tag per line
    page.click("#save")
    page.wait_for_function(
        "() => document.getElementById('edit-message').textContent === 'saved in the store'"
    )
    meta = json.loads((path / run_id / "run.json").read_text())["meta"]
    assert (meta["comment"], meta["tags"]) == ("the best trial so far", ["best", "paper"])
    page.reload()
    assert page.input_value("#comment") == "the best trial so far"
    page.goto(server.url + "/?where=id==" + run_id)
    page.wait_for_selector(f"#runs tr[data-id='{run_id}'] .tag")
    assert page.locator(f"#runs tr[data-id='{run_id}'] .tag").all_inner_texts() == ["best", "paper"]


def test_a_run_is_deleted_only_after_confirmation(page, tmp_path):
    ids = make_runs(tmp_path / "runs", tmp_path / "work")
    victim = ids["failed"]
    with UiServer("--store", str(tmp_path / "runs"), "--allow-delete", cwd=tmp_path) as server:
        page.goto(f"{server.url}/runs/{victim}")
        page.click("#delete")
        assert page.is_visible("#confirm-delete")
        page.click("#confirm-delete-no")
        assert (tmp_path / "runs" / victim).is_dir()
        page.click("#delete")
        page.click("#confirm-delete-yes")
        page.wait_for_url(f"{server.url}/?store=0")
        assert not (tmp_path / "runs" / victim).exists()
        page.wait_for_function(
            "() => document.querySelectorAll('#runs tbody tr[data-id]').length === 9"
        )
    assert page.dialogs == []


# --- live -----------------------------------------------------------------------------------------

LIVE_EXPERIMENT = """\
import time
from expkit import Experiment

ex = Experiment("live")

@ex.main
def main(_run):
    for i in range(20):
        print(f"line {i}", flush=True)
        _run.log_scalar("progress", i, i)
        time.sleep(0.3)
    return "done"
"""


def test_a_running_run_is_followed_until_it_ends(page, tmp_path):
    # Stores write at most about once a second: a beat of 1 s keeps the run from looking
    # dead (three beats without news) between two writes.
    write_project(tmp_path, {"live.py": LIVE_EXPERIMENT}, pyproject="beat_interval = 1.0\n")
    proc = subprocess.Popen(
        [EXPKIT, "run", "live.py"], cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "runs" / "1" / "run.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with UiServer(cwd=tmp_path) as server:
            page.goto(server.url + "/")
            page.wait_for_selector("#runs tr[data-id='1'] .status-running")
            page.goto(server.url + "/runs/1")
            page.wait_for_function(
                "() => document.getElementById('following').textContent.includes('following')"
            )
            first = page.inner_text("#captured-output")
            page.wait_for_function(
                "() => document.getElementById('captured-output').textContent.includes('line 19')",
                timeout=20_000,
            )
            assert len(page.inner_text("#captured-output")) > len(first)
            page.wait_for_function(
                "() => document.getElementById('status').textContent === 'COMPLETED'"
            )
            assert page.inner_text("#following") == ""
            assert page.inner_text("#result") == "done"
            assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- nothing a store holds runs as code -----------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A store whose names, config, output, metric, artifact and sweep carry markup."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    root = tmp_path_factory.mktemp("ui-xss")
    (root / "a.txt").write_text(XSS)
    ex = Experiment(XSS)
    ex.observers.append(FileStorageObserver(root / "runs"))
    ex.add_config(title=SCRIPT, note={"<b>": XSS})

    @ex.main
    def main(title, _run):
        print(title, XSS)
        _run.log_scalar(XSS, 1.0, 0)
        _run.log_scalar(XSS, 2.0, 1)
        _run.add_artifact(str(root / "a.txt"), name=f"{XSS}.txt")
        return XSS

    sweep = {"id": "<svg onload=alert(5)>", "index": 0, "size": 2, "params": {"title": 1}}
    ids = [
        ex.run(options={"--capture": "sys"}, meta_info={"sweep": sweep})._id,
        ex.run(
            config_updates={"title": "x"},
            options={"--capture": "sys"},
            meta_info={"sweep": {**sweep, "index": 1}},
        )._id,
    ]
    with UiServer("--store", str(root / "runs"), cwd=root) as server:
        yield server, root / "runs", ids


INJECTED = (
    "document.querySelectorAll('img[src=x], svg[onload], b, script:not([src]):not([type])').length"
)


def test_markup_in_stored_runs_and_edits_is_shown_as_text(page, hostile):
    server, path, ids = hostile
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr[data-id]")
    assert page.locator("#runs tbody td", has_text=XSS).count() >= 2  # experiment, result
    assert page.locator("#runs tr.group-row a").inner_text() == "<svg onload=alert(5)>"

    page.goto(f"{server.url}/runs/{ids[0]}")
    page.wait_for_function("() => window.expkitRun && window.expkitRun.panels.every(p => p.plot)")
    page.wait_for_function(
        f"() => document.getElementById('captured-output').textContent.includes({json.dumps(XSS)})"
    )
    assert page.inner_text("#experiment") == XSS
    assert page.locator("td.value", has_text=SCRIPT).count() == 1
    assert page.locator(f"figure[data-metric='{XSS}'] figcaption strong").inner_text() == XSS
    page.wait_for_function(
        f"() => document.querySelector('pre.preview').textContent === {json.dumps(XSS)}"
    )
    page.fill("#comment", f"{XSS} {SCRIPT}")
    page.fill("#tags", XSS)
    page.click("#save")
    page.wait_for_function(
        "() => document.getElementById('edit-message').textContent === 'saved in the store'"
    )
    assert (
        json.loads((path / ids[0] / "run.json").read_text())["meta"]["comment"] == f"{XSS} {SCRIPT}"
    )
    page.reload()
    assert page.input_value("#comment") == f"{XSS} {SCRIPT}"
    assert page.evaluate(INJECTED) == 0

    page.goto(server.url + "/")
    page.wait_for_selector(f"#runs tr[data-id='{ids[0]}'] .tag")
    assert page.locator(f"#runs tr[data-id='{ids[0]}'] .tag").inner_text() == XSS
    assert (
        page.locator(f"#runs tr[data-id='{ids[0]}'] td.comment").inner_text() == f"{XSS} {SCRIPT}"
    )
    assert page.evaluate(INJECTED) == 0

    page.goto(f"{server.url}/compare?run={ids[0]}&run={ids[1]}")
    page.wait_for_function("() => window.expkitCompare.panels.every(p => p.plot)")
    assert page.locator("#config-table td", has_text=SCRIPT).count() == 1
    assert page.evaluate(INJECTED) == 0

    page.goto(f"{server.url}/groups/sweep/%3Csvg%20onload%3Dalert(5)%3E")
    page.wait_for_selector("#group-runs tbody tr")
    assert page.locator("h1 .run-id").inner_text() == "<svg onload=alert(5)>"
    assert page.evaluate(INJECTED) == 0

    page.goto(f"{server.url}/runs/%3Cimg%20src%3Dx%3E")  # an error page echoing the id
    assert "no run '<img src=x>'" in page.inner_text("body")
    assert page.evaluate(INJECTED) == 0
    assert page.dialogs == [] and page.errors == []


# --- what the tester found ---------------------------------------------------------------------


def _saved(page) -> str:
    """The message beside the save button once the save has answered."""
    page.wait_for_function(
        "() => !['', 'saving…'].includes(document.getElementById('edit-message').textContent)"
    )
    return page.inner_text("#edit-message")


def test_two_pages_editing_one_run_never_undo_each_others_edit(browser, showcase):
    server, path, ids = showcase
    run_id = ids["study"][1]
    first = browser.new_page()
    second = browser.new_page()
    try:
        for opened in (first, second):
            opened.goto(f"{server.url}/runs/{run_id}")
        first.fill("#tags", "from-first")
        first.click("#save")
        assert _saved(first) == "saved in the store"
        second.fill("#comment", "from the second page")  # loaded before the tag was added
        second.click("#save")
        assert _saved(second) == (
            f"run {run_id} was changed since this page was loaded (by another page or "
            "command): reload the page to see it, then make your change again"
        )
        meta = json.loads((path / run_id / "run.json").read_text())["meta"]
        assert meta["tags"] == ["from-first"] and "comment" not in meta
        second.reload()
        assert second.input_value("#tags") == "from-first"
        second.fill("#comment", "from the second page")
        second.click("#save")
        assert _saved(second) == "saved in the store"
        meta = json.loads((path / run_id / "run.json").read_text())["meta"]
        assert (meta["comment"], meta["tags"]) == ("from the second page", ["from-first"])
        # Saved once, a page edits on from what it saved.
        second.fill("#tags", "from-first\nagain")
        second.click("#save")
        assert _saved(second) == "saved in the store"
    finally:
        first.close()
        second.close()


def test_a_tag_holding_a_comma_stays_one_tag(page, showcase):
    server, path, ids = showcase
    run_id = ids["study"][2]
    page.goto(f"{server.url}/runs/{run_id}")
    page.fill("#tags", "lr=0.1, momentum=0.9\nbaseline")
    page.click("#save")
    assert _saved(page) == "saved in the store"
    meta = json.loads((path / run_id / "run.json").read_text())["meta"]
    assert meta["tags"] == ["lr=0.1, momentum=0.9", "baseline"]
    page.reload()
    assert page.input_value("#tags") == "lr=0.1, momentum=0.9\nbaseline"
    page.fill("#comment", "saved again")
    page.click("#save")
    assert _saved(page) == "saved in the store"
    meta = json.loads((path / run_id / "run.json").read_text())["meta"]
    assert (meta["comment"], meta["tags"]) == ("saved again", ["lr=0.1, momentum=0.9", "baseline"])
    page.goto(server.url + "/?where=id==" + run_id)
    page.wait_for_selector(f"#runs tr[data-id='{run_id}'] .tag")
    tags = page.locator(f"#runs tr[data-id='{run_id}'] .tag").all_inner_texts()
    assert tags == ["lr=0.1, momentum=0.9", "baseline"]


def test_tags_are_saved_on_a_run_whose_comment_is_longer_than_the_page_may_send(page, showcase):
    # `expkit run --comment` takes any length; the page takes 10,000 characters.
    server, path, ids = showcase
    run_id = ids["study"][3]
    long = "a long note. " * 1000
    entry = json.loads((path / run_id / "run.json").read_text())
    entry["meta"]["comment"] = long
    (path / run_id / "run.json").write_text(json.dumps(entry))
    page.goto(f"{server.url}/runs/{run_id}")
    page.wait_for_function(f"() => document.getElementById('comment').value.length === {len(long)}")
    page.fill("#tags", "kept")
    page.click("#save")
    assert _saved(page) == "saved in the store"
    meta = json.loads((path / run_id / "run.json").read_text())["meta"]
    assert (meta["comment"], meta["tags"]) == (long, ["kept"])


def test_a_metric_that_blew_up_shows_where_and_its_result_is_a_number(page, tmp_path):
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("diverged")
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))
    ex.add_config(big=1)

    @ex.main
    def main(_run):
        for step in range(101):
            value = float("nan") if step == 50 else 1 / (1 + step)
            _run.log_scalar("loss", float("inf") if step == 100 else value, step)
        return float("nan")

    huge = 12345678901234567891  # more than a JavaScript number holds exactly
    ex.run(options={"--capture": "sys"}, config_updates={"big": huge})
    run_id = ex.run(options={"--capture": "sys"})._id
    with UiServer("--store", str(tmp_path / "runs"), cwd=tmp_path) as server:
        page.goto(f"{server.url}/runs/{run_id}")
        page.wait_for_function("() => window.expkitRun && window.expkitRun.panels[0].plot")
        cells = page.locator("#metrics + table tbody tr").first.locator("td").all_inner_texts()
        assert cells == ["loss", "101", "inf", "0.01", "inf"]
        note = page.inner_text("figure[data-metric=loss] .chart-note")
        assert note.startswith(
            "99 points, 2 points are NaN or infinite (1 NaN, 1 inf), not drawn: "
            "the line breaks there"
        )
        steps, values = page.evaluate("window.expkitRun.panels[0].plot.data")
        # The line stops at the NaN and at the inf: no straight line across them.
        assert values[steps.index(50)] is None and values[steps.index(100)] is None
        assert values[steps.index(49)] == pytest.approx(1 / 50)
        assert page.evaluate("window.expkitRun.panels[0].plot.series[1].spanGaps") is False
        assert page.inner_text("#result") == "NaN"
        page.goto(server.url + "/")
        cell = page.locator(f"#runs tr[data-id='{run_id}'] td.value").first
        assert cell.inner_text() == "NaN"
        assert cell.get_attribute("class") == "value number"
        assert page.evaluate(f"({COLUMN_BIG})") == ["1", str(huge)]  # newest first
        assert page.errors == []
