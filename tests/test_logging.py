"""Logging never does expensive work on the event loop: plain tracebacks, no locals."""

import json
import logging

import pytest
import structlog

from herald.core.logging import configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def fail_with_a_big_local() -> None:
    request_body = {"payload": "SECRET-LOCAL-" + "x" * 1_000_000}  # noqa: F841 (seen by rich)
    raise ValueError("boom")


def log_the_failure() -> None:
    try:
        fail_with_a_big_local()
    except ValueError:
        structlog.get_logger("herald.test").exception("request failed")


def test_console_logs_print_a_plain_traceback_without_locals(restore_logging, capsys):
    configure_logging("INFO", json_logs=False)
    log_the_failure()
    err = capsys.readouterr().err
    assert "request failed" in err
    assert "Traceback (most recent call last):" in err
    # The standard library's form, not a rich panel: file, line and function on one line.
    assert "in fail_with_a_big_local\n" in err
    assert "ValueError: boom" in err
    assert "SECRET-LOCAL" not in err
    assert len(err) < 5000


def test_json_logs_carry_the_traceback_as_a_string(restore_logging, capsys):
    configure_logging("INFO", json_logs=True)
    log_the_failure()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "request failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "SECRET-LOCAL" not in line["exception"]
