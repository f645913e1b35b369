"""The farm's log lines: JSON or readable, each with the ids of the work it is about, and never
a presigned URL, a password or a token, whoever logged it and however."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from celery.signals import setup_logging
from click.testing import CliRunner

from farm.logs import (
    FarmHandler,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
    redact,
    set_process_context,
)
from farmcli.main import main

PRESIGNED = (
    "https://s3.example.com/render-farm/jobs/j1/renders/0000-v0.png"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAFARM%2F20250101%2Fus-east-1"
    "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)
API_TOKEN = "rf_Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTAxMjM0NTY"


def parsed(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_the_ids_in_scope(json_lines):
    log = logging.getLogger("workers.shard")
    set_process_context(worker="host:cuda0")
    log.info("before")
    with log_context(job="j-1", shard=7):
        log.info("claimed %s", "shard")
        with log_context(render=42):
            log.warning("rendered")
        log.info("after the render")
    log.info("outside")

    before, claimed, rendered, after, outside = parsed(json_lines)
    assert before == {
        "time": before["time"],
        "level": "INFO",
        "logger": "workers.shard",
        "message": "before",
        "worker": "host:cuda0",
    }
    assert before["time"].endswith("+00:00")
    assert (claimed["job"], claimed["shard"], claimed["message"]) == ("j-1", 7, "claimed shard")
    assert "render" not in claimed
    assert {k: rendered[k] for k in ("job", "shard", "render", "worker", "level")} == {
        "job": "j-1",
        "shard": 7,
        "render": 42,
        "worker": "host:cuda0",
        "level": "WARNING",
    }
    assert "render" not in after and after["shard"] == 7
    assert "job" not in outside and outside["worker"] == "host:cuda0"


def test_threads_keep_their_own_ids_and_share_the_workers(json_lines):
    """The heartbeat thread logs with the worker's name but not the shard of the main thread."""
    set_process_context(worker="host:cpu0")
    with log_context(shard=3):
        thread = threading.Thread(target=lambda: logging.getLogger("hb").info("beat"))
        thread.start()
        thread.join()
    (beat,) = parsed(json_lines)
    assert beat["worker"] == "host:cpu0" and "shard" not in beat


def test_exceptions_are_one_json_line_each(json_lines):
    try:
        raise RuntimeError("decode failed")
    except RuntimeError:
        logging.getLogger("workers").exception("shard %s failed", 9)
    (line,) = parsed(json_lines)
    assert line["message"] == "shard 9 failed"
    assert "RuntimeError: decode failed" in line["exception"]


def test_the_readable_format_names_the_ids():
    record = logging.LogRecord("workers.shard", logging.INFO, __file__, 1, "done", None, None)
    record.farm_ids = {"job": "j-1", "shard": 7}
    assert TextFormatter().format(record).endswith(" INFO workers.shard [job=j-1 shard=7]: done")
    plain = logging.LogRecord("farm", logging.INFO, __file__, 1, "up", None, None)
    assert TextFormatter().format(plain).endswith(" INFO farm: up")


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"GET {PRESIGNED} took 2 s", "X-Amz-Signature", "jobs/j1/renders/0000-v0.png?***"),
        (
            "https://storage.googleapis.com/b/k?X-Goog-Signature=abcd&X-Goog-Expires=60",
            "abcd",
            "b/k?***",
        ),
        ("broker redis://:s3cr3t-pw@redis:6379/0 down", "s3cr3t-pw", "redis://:***@redis:6379"),
        (
            "postgresql+psycopg://farm:pg-pass-77@db:5432/farm",
            "pg-pass-77",
            "postgresql+psycopg://farm:***@db",
        ),
        (f"token {API_TOKEN} revoked", API_TOKEN[3:], "token rf_*** revoked"),
        ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678", "Bearer ***"),
        ("{'password': 'hunter22', 'user': 'ada'}", "hunter22", "'user': 'ada'"),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "aws_secret_access_key="),
        ("hf token hf_abcdefghijklmnopqrstuv", "hf_abcdefghijklmnopqrstuv", "hf_***"),
    ],
)
def test_redaction(text: str, secret: str, kept: str):
    cleaned = redact(text)
    assert secret not in cleaned and kept in cleaned


def test_urls_without_secrets_stay_whole():
    text = "job page http://127.0.0.1:8000/jobs/j-1?page=2 and s3://bucket/jobs/j-1/x.png"
    assert redact(text) == text


def test_no_secret_reaches_a_line_through_arguments_or_tracebacks(json_lines):
    log = logging.getLogger("farm.storage")
    log.info("uploaded, served at %s", PRESIGNED)
    log.info("connecting to %(url)s", {"url": "redis://:broker-pw-1@redis:6379/0"})
    try:
        raise ConnectionError(f"could not reach postgresql://farm:db-pw-2@db/farm ({API_TOKEN})")
    except ConnectionError:
        log.exception("database down")
    written = json_lines.getvalue()
    for secret in ("X-Amz-Signature", "broker-pw-1", "db-pw-2", API_TOKEN):
        assert secret not in written, secret
    assert len(parsed(json_lines)) == 3


def test_configuring_twice_keeps_one_farm_handler(json_lines):
    configure_logging(logging.INFO, "json", stream=json_lines)
    logging.getLogger("farm").warning("once")
    assert len(parsed(json_lines)) == 1
    assert sum(isinstance(h, FarmHandler) for h in logging.getLogger().handlers) == 1


def test_celery_logs_through_the_farm_handler(json_lines, monkeypatch):
    """Celery's `setup_logging` has a receiver, so neither the worker nor beat installs a
    handler of its own: Celery's loggers write JSON lines like everyone else's."""
    import workers.celery_app  # noqa: F401  (connects the receiver)

    monkeypatch.setenv("FARM_LOG_FORMAT", "json")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, FarmHandler)]
    handlers_before = [h for h in root.handlers]
    responses = setup_logging.send(
        sender=None, loglevel=logging.INFO, logfile=None, format="", colorize=False
    )
    assert responses
    (farm_handler,) = [h for h in root.handlers if isinstance(h, FarmHandler)]
    assert isinstance(farm_handler.formatter, JsonFormatter)
    assert [h for h in root.handlers if h is not farm_handler] == handlers_before
    farm_handler.setStream(json_lines)
    with log_context(shard=5):
        logging.getLogger("celery.app.trace").info("Task farm.render_shard[abc] succeeded")
    (line,) = parsed(json_lines)
    assert (line["logger"], line["shard"]) == ("celery.app.trace", 5)


def test_the_cli_writes_json_when_asked(json_lines, monkeypatch, tmp_path):
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FARM_LOG_FORMAT", "json")
    result = CliRunner().invoke(main, ["-v", "models", "list"])
    assert result.exit_code == 0, result.output
    (farm_handler,) = [h for h in logging.getLogger().handlers if isinstance(h, FarmHandler)]
    assert isinstance(farm_handler.formatter, JsonFormatter)
    assert logging.getLogger().level == logging.INFO


def test_a_bad_log_format_is_one_line_of_error(monkeypatch):
    monkeypatch.setenv("FARM_LOG_FORMAT", "xml")
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: FARM_LOG_FORMAT must be one of text, json, got 'xml'")
