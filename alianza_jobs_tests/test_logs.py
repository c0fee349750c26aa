"""Child loggers with bound context, into the Dagster run log and as JSON lines on stderr."""

from __future__ import annotations

import json
import logging

from alianza_jobs.logs import TaskLogger, bound_logger, get_logger, logfmt, parse_logfmt_suffix


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def _dagster_like() -> tuple[logging.Logger, _Capture]:
    logger = logging.getLogger("test-dagster-log")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    capture = _Capture()
    logger.handlers = [capture]
    return logger, capture


def test_child_binds_context_and_both_sinks_get_it(capsys) -> None:
    dagster_log, capture = _dagster_like()
    root = TaskLogger(
        {"run_id": "r-1", "job": "j", "cron": "*/5 * * * *"}, dagster_log, logging.DEBUG
    )
    child = root.child(video_id=7, external_id="abc")
    child.warning("Video marked as error", reason="bad codec")

    [(level, message)] = capture.messages
    assert level == logging.WARNING
    # Dagster records run id and job itself; the rest travels in the message.
    text, fields = parse_logfmt_suffix(message)
    assert text == "Video marked as error"
    assert fields == {
        "cron": "*/5 * * * *",
        "video_id": "7",
        "external_id": "abc",
        "reason": "bad codec",
    }

    line = json.loads(capsys.readouterr().err.strip())
    assert line["msg"] == "Video marked as error"
    assert line["level"] == "warning"
    assert (line["run_id"], line["job"], line["video_id"]) == ("r-1", "j", 7)


def test_levels_filter_below_the_configured_one(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "warn")
    dagster_log, capture = _dagster_like()
    log = TaskLogger({}, dagster_log)
    log.debug("no")
    log.info("no")
    log.error("yes", error=ValueError("boom"))
    assert [m for _, m in capture.messages] == ['yes  error="ValueError: boom"']
    assert capsys.readouterr().err.count("\n") == 1


def test_get_logger_returns_the_bound_run_logger() -> None:
    dagster_log, capture = _dagster_like()
    with bound_logger(TaskLogger({"run_id": "r-2"}, dagster_log, logging.DEBUG)):
        get_logger(item_id=3).info("inside")
    get_logger().info("outside")  # stderr only: no run to log into
    assert [m for _, m in capture.messages] == ["inside  item_id=3"]


def test_logfmt_round_trip_with_quotes_and_spaces() -> None:
    fields = {"a": "plain", "b": "two words", "c": 'say "hi"', "d": 1.5, "e": True}
    text, parsed = parse_logfmt_suffix("msg  " + logfmt(fields))
    assert text == "msg"
    assert parsed == {"a": "plain", "b": "two words", "c": 'say "hi"', "d": "1.5", "e": "true"}
