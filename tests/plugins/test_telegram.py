"""TelegramObserver: real runs send Sacred's messages to a real local Bot API stand-in."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from http_server import RecordingServer, ending_experiment

from expkit.errors import UsageError
from expkit.observers import TelegramObserver

TOKEN = "123456:SECRET-token"
SENT = {"ok": True, "result": {"message_id": 1}}


@pytest.fixture
def bot_api(http_server: RecordingServer) -> RecordingServer:
    http_server.answer(200, SENT)
    return http_server


def experiment(observer: Any, body: object = 42) -> Any:
    return ending_experiment("train", observer, body)


def test_start_and_completion_are_sent_to_the_chat(bot_api: RecordingServer) -> None:
    observer = TelegramObserver(TOKEN, chat_id=-100042, api_url=bot_api.url)
    run = experiment(observer).run()
    started, completed = bot_api.requests
    assert started.path == completed.path == f"/bot{TOKEN}/sendMessage"
    host = run.host_info["hostname"]
    assert started.json() == {
        "chat_id": -100042,
        "text": f"♻ *train* started at _{run.start_time}_ on host `{host}`",
        "parse_mode": "Markdown",
        "disable_notification": True,
    }
    assert completed.json() == {
        "chat_id": -100042,
        "text": "✅ *train* completed after _less than a second_ with result=`42`",
        "parse_mode": "Markdown",
        "disable_notification": False,
    }


def test_silent_completion_arrives_without_a_sound(bot_api: RecordingServer) -> None:
    observer = TelegramObserver(TOKEN, "@lab", silent_completion=True, api_url=bot_api.url)
    experiment(observer).run()
    assert [r.json()["disable_notification"] for r in bot_api.requests] == [True, True]


def test_a_failure_sends_the_error_and_the_backtrace(bot_api: RecordingServer) -> None:
    ex = experiment(TelegramObserver(TOKEN, 7, api_url=bot_api.url), KeyError("lr"))
    with pytest.raises(KeyError):
        ex.run()
    text = bot_api.requests[-1].json()["text"]
    assert text.startswith("❌ *train* failed after _less than a second_ with `KeyError: 'lr'`\n\n")
    assert "Backtrace:\n```Traceback (most recent call last):\n" in text
    assert "in main\n    raise end\nKeyError: 'lr'\n```" in text
    assert bot_api.requests[-1].json()["disable_notification"] is False


def test_an_interruption_is_sent(bot_api: RecordingServer) -> None:
    ex = experiment(TelegramObserver(TOKEN, 7, api_url=bot_api.url), KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ex.run()
    assert bot_api.requests[-1].json()["text"] == (
        "⚠ *train* interrupted after _less than a second_"
    )


def test_a_telegram_bot_object_gives_its_token(bot_api: RecordingServer) -> None:
    class Bot:  # the part of python-telegram-bot's Bot the observer uses
        token = TOKEN

    experiment(TelegramObserver(Bot(), 7, started_text=None, api_url=bot_api.url)).run()
    [completed] = bot_api.requests
    assert completed.path == f"/bot{TOKEN}/sendMessage"


def test_from_config_reads_token_chat_and_templates(
    bot_api: RecordingServer, tmp_path: Path
) -> None:
    settings = tmp_path / "telegram.json"
    settings.write_text(
        json.dumps(
            {
                "token": TOKEN,
                "chat_id": "12345",
                "api_url": bot_api.url + "/",
                "silent_completion": True,
                "started_text": None,
                "completed_text": "{experiment[name]}: {result} ({command})",
            }
        )
    )
    observer = TelegramObserver.from_config(settings)
    experiment(observer).run()
    [completed] = bot_api.requests
    assert completed.json() == {
        "chat_id": "12345",
        "text": "train: 42 (main)",
        "parse_mode": "Markdown",
        "disable_notification": True,
    }


def test_from_config_without_chat_id_says_so(tmp_path: Path) -> None:
    settings = tmp_path / "telegram.json"
    settings.write_text(json.dumps({"token": TOKEN}))
    with pytest.raises(UsageError, match="lacks 'chat_id'"):
        TelegramObserver.from_config(settings)


def test_an_http_proxy_from_the_config_carries_the_messages(
    bot_api: RecordingServer, tmp_path: Path
) -> None:
    # The recording server plays the proxy: urllib sends it the absolute Bot API URL.
    settings = tmp_path / "telegram.json"
    settings.write_text(
        json.dumps(
            {
                "token": TOKEN,
                "chat_id": 1,
                "api_url": "http://bot-api.example.invalid",
                "proxy_url": bot_api.url,
                "username": "me",
                "password": "p@ss",
                "started_text": None,
            }
        )
    )
    experiment(TelegramObserver.from_config(settings)).run()
    [completed] = bot_api.requests
    assert completed.path == f"http://bot-api.example.invalid/bot{TOKEN}/sendMessage"
    expected = "Basic " + base64.b64encode(b"me:p@ss").decode()
    assert completed.headers["Proxy-Authorization"] == expected


def test_a_socks_proxy_is_refused_clearly(tmp_path: Path) -> None:
    settings = tmp_path / "telegram.json"
    settings.write_text(
        json.dumps({"token": TOKEN, "chat_id": 1, "proxy_url": "socks5://127.0.0.1:1080"})
    )
    with pytest.raises(UsageError, match="socks5:// is not supported"):
        TelegramObserver.from_config(settings)


def test_a_refusal_is_a_warning_that_hides_the_token(
    bot_api: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    bot_api.answer(400, {"ok": False, "description": "Bad Request: chat not found"})
    observer = TelegramObserver(TOKEN, 99, api_url=bot_api.url)
    with caplog.at_level(logging.WARNING, logger="expkit.notify"):
        run = experiment(observer).run()
    assert run.status == "COMPLETED"
    assert len(bot_api.requests) == 2  # started and completed, each tried once
    messages = [r.getMessage() for r in caplog.records if r.name == "expkit.notify"]
    assert messages[-1].startswith(
        "Telegram message for the completed run not sent: HTTP 400 Bad Request:"
    )
    assert "chat not found" in messages[-1]
    assert "SECRET" not in caplog.text
    assert "SECRET" not in repr(observer)


def test_an_answer_that_is_not_ok_is_a_warning(
    bot_api: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    bot_api.answer(200, {"ok": False, "description": "flood control"})
    with caplog.at_level(logging.WARNING, logger="expkit.notify"):
        experiment(TelegramObserver(TOKEN, 1, started_text=None, api_url=bot_api.url)).run()
    assert "the Bot API refused the message" in caplog.text
    assert "flood control" in caplog.text


def test_a_token_is_required() -> None:
    with pytest.raises(UsageError, match="needs the bot's token"):
        TelegramObserver(object(), 1)
