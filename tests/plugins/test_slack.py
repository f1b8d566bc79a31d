"""SlackObserver: real runs post Sacred's messages to a real local HTTP server."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_script
from http_server import RecordingServer, ending_experiment

from expkit import SacredInterrupt
from expkit.errors import UsageError
from expkit.observers import SlackObserver


def experiment(observer: Any, body: object = 42) -> Any:
    return ending_experiment("notify", observer, body)


def test_a_completed_run_posts_sacreds_message(http_server: RecordingServer) -> None:
    run = experiment(SlackObserver(http_server.url + "/hook")).run()
    assert run.status == "COMPLETED"
    [request] = http_server.requests
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "username": "expkit-bot",
        "icon_emoji": ":angel:",
        "text": ":white_check_mark: *notify* completed after _less than a second_ with result=`42`",
    }


def test_a_failed_run_names_its_error(http_server: RecordingServer) -> None:
    ex = experiment(SlackObserver(http_server.url), ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        ex.run()
    [request] = http_server.requests
    assert request.json()["text"] == (
        ":x: *notify* failed after _less than a second_ with `ZeroDivisionError: division by zero`"
    )


def test_an_interrupted_run_says_so(http_server: RecordingServer) -> None:
    class Stopped(SacredInterrupt):
        STATUS = "STOPPED"

    with pytest.raises(Stopped):
        experiment(SlackObserver(http_server.url), Stopped()).run()
    [request] = http_server.requests
    assert request.json()["text"] == ":warning: *notify* interrupted after _less than a second_"


def test_from_config_reads_the_webhook_and_templates(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    settings = tmp_path / "slack.json"
    settings.write_text(
        json.dumps(
            {
                "webhook_url": http_server.url + "/services/T/B/X",
                "bot_name": "lab-bot",
                "icon": ":robot_face:",
                "completed_text": "{experiment[name]} gave {result} with C={config[C]}",
            }
        )
    )
    observer = SlackObserver.from_config(settings)
    ex = experiment(observer, 0.9)
    ex.add_config(C=1.5)
    ex.run()
    [request] = http_server.requests
    assert request.path == "/services/T/B/X"
    assert request.json() == {
        "username": "lab-bot",
        "icon_emoji": ":robot_face:",
        "text": "notify gave 0.9 with C=1.5",
    }
    assert observer.priority == 10


def test_from_config_takes_toml_too(http_server: RecordingServer, tmp_path: Path) -> None:
    settings = tmp_path / "slack.toml"
    settings.write_text(f'webhook_url = "{http_server.url}"\nfailed_text = "broke: {{error}}"\n')
    ex = experiment(SlackObserver.from_config(settings), ValueError("bad C"))
    with pytest.raises(ValueError):
        ex.run()
    assert http_server.requests[0].json()["text"] == "broke: ValueError: bad C"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bot_name": "x"}, "lacks 'webhook_url'"),
        ({"webhook_url": "http://h", "colour": "red"}, "unknown key(s) colour"),
    ],
)
def test_from_config_with_bad_settings_says_what_is_wrong(
    tmp_path: Path, settings: dict, message: str
) -> None:
    path = tmp_path / "slack.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SlackObserver.from_config(path)


def test_a_refused_message_is_a_warning_and_the_run_completes(
    http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    http_server.answer(404, b"no_service", "text/plain")
    with caplog.at_level(logging.WARNING, logger="expkit.notify"):
        run = experiment(SlackObserver(http_server.url)).run()
    assert run.status == "COMPLETED"
    assert len(http_server.requests) == 1
    [warning] = [r.getMessage() for r in caplog.records if r.name == "expkit.notify"]
    assert warning == (
        "Slack message for the completed run not sent: HTTP 404 Not Found: no_service"
    )


def test_an_unreachable_slack_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"  # nobody listens there
    with caplog.at_level(logging.WARNING, logger="expkit.notify"):
        run = experiment(SlackObserver(url, timeout=5)).run()
    assert run.status == "COMPLETED"
    assert "Slack message for the completed run not sent" in caplog.text
    assert "refused" in caplog.text.lower()


def test_a_template_with_an_unknown_field_is_a_warning(
    http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    observer = SlackObserver(http_server.url, completed_text="{experiment[name]} {accuracy}")
    with caplog.at_level(logging.WARNING, logger="expkit.notify"):
        assert experiment(observer).run().status == "COMPLETED"
    assert http_server.requests == []
    assert "completed_text cannot be filled in (KeyError: 'accuracy')" in caplog.text


def test_a_script_run_notifies(http_server: RecordingServer, tmp_path: Path) -> None:
    (tmp_path / "slack.json").write_text(json.dumps({"webhook_url": http_server.url}))
    script = tmp_path / "exp.py"
    script.write_text(
        "from expkit import Experiment\n"
        "from expkit.observers import SlackObserver\n"
        "ex = Experiment('scripted')\n"
        "ex.observers.append(SlackObserver.from_config('slack.json'))\n"
        "@ex.automain\n"
        "def main(answer=41):\n"
        "    return answer + 1\n"
    )
    done = run_script(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [request] = http_server.requests
    assert request.json()["text"].startswith(":white_check_mark: *scripted* completed after")
    assert request.json()["text"].endswith("with result=`42`")
