"""The farm's log lines: one format for the CLI, the workers and Celery's own loggers, each line
carrying the ids of the work it is about, and never a secret.

`FARM_LOG_FORMAT=json` writes one JSON object per line (time, level, logger, message, and the
job / shard / render / worker ids that apply), which log shippers index without parsing rules;
anything else writes the same fields as a readable line. The ids come from `log_context`, a
context manager over a contextvar, so the code that logs does not pass them around; the
worker's own name is set once per process (`set_process_context`), because the heartbeat and
the metrics threads start with an empty context.

Redaction runs on every line the farm's handler writes, message, arguments and traceback
alike: a presigned URL is a bearer credential for as long as it lives, and a broker or database
URL carries its password. They are cut here, in one place, instead of at every call site.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any
from urllib.parse import parse_qsl

LOG_FORMATS = ("text", "json")
# The ids first, in this order; any other key given to `log_context` follows them.
ID_FIELDS = ("job", "shard", "render", "worker")
REDACTED = "***"

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("farm_log_context", default=_EMPTY)
_process: dict[str, object] = {}


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Add `ids` (job=..., shard=..., render=...) to every line logged inside the block, in
    this thread or task; None values are left out, and the outer ids come back after it."""
    merged = {**_context.get(), **{k: v for k, v in ids.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


def set_process_context(**ids: object) -> None:
    """The ids that hold for the whole process and all its threads (the worker's name),
    replacing those set before."""
    _process.clear()
    _process.update({k: v for k, v in ids.items() if v is not None})


def current_ids() -> dict[str, object]:
    """The ids a line logged here and now would carry, known fields first."""
    ids = {**_process, **_context.get()}
    ordered = {k: ids[k] for k in ID_FIELDS if k in ids}
    return {**ordered, **{k: v for k, v in ids.items() if k not in ordered}}


# --- redaction --------------------------------------------------------------------------------

# Query parameters that make a URL a credential: S3 SigV4 and SigV2, GCS, and plain tokens.
_SIGNED_QUERY_KEYS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "sig",
        "token",
        "access_token",
    }
)
_URL_WITH_QUERY = re.compile(
    r"(?P<base>\b[a-z][a-z0-9+.\-]*://[^\s?#'\"<>]+)\?(?P<query>[^\s#'\"<>]*)", re.I
)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s/@:'\"<>]*):[^\s/@'\"<>]+@", re.I)
_TOKENS = (
    # The farm's API tokens (farm/auth.py TOKEN_PREFIX) and Hugging Face's.
    (re.compile(r"\brf_[A-Za-z0-9_\-]{8,}"), "rf_" + REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_" + REDACTED),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}", re.I), r"\1 " + REDACTED),
    # key=value and 'key': 'value' pairs whose key names a secret.
    (
        re.compile(
            r"(?P<key>\b(?:password|passwd|secret|secret_key|secret_access_key|"
            r"aws_secret_access_key|api_key|access_token|token)\b['\"]?\s*[=:]\s*['\"]?)"
            r"[^\s'\",;&}]+",
            re.I,
        ),
        r"\g<key>" + REDACTED,
    ),
)


def _strip_signed_query(match: re.Match[str]) -> str:
    keys = {key.lower() for key, _ in parse_qsl(match["query"], keep_blank_values=True)}
    if keys & _SIGNED_QUERY_KEYS:
        return f"{match['base']}?{REDACTED}"
    return match[0]


def redact(text: str) -> str:
    """`text` without presigned query strings, passwords in URLs or tokens."""
    text = _URL_WITH_QUERY.sub(_strip_signed_query, text)
    text = _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
    for pattern, replacement in _TOKENS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats the message with its arguments, then redacts it (and the traceback), so that
    no formatter after it can put a secret back."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class ContextFilter(logging.Filter):
    """Puts the current ids on the record (as `farm_ids`) for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.farm_ids = current_ids()
        return True


# --- formats ----------------------------------------------------------------------------------


def _ids_of(record: logging.LogRecord) -> Mapping[str, object]:
    return getattr(record, "farm_ids", None) or _EMPTY


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids, and
    `exception` / `stack` where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _ids_of(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2025-01-31 12:00:00,123 INFO workers.shard [job=... shard=7]: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(farm_ids_text)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = _ids_of(record)
        record.farm_ids_text = (
            " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" if ids else ""
        )
        return super().format(record)


class FarmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs, told apart from everyone else's by its type.

    It writes to the process's real stderr, not to whatever `sys.stderr` is at the moment:
    Celery may swap that for a proxy that logs what is written to it (a loop through this
    handler), and click's test runner for a buffer that is closed after the command."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.__stderr__ or sys.stderr)


def configure_logging(
    level: int | str = logging.INFO, log_format: str = "text", stream: IO[str] | None = None
) -> FarmHandler:
    """Send every logger's lines through one farm handler on the root logger (replacing one
    installed before, so calling it twice does not double the lines)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, FarmHandler)]:
        root.removeHandler(old)
        old.close()
    handler = FarmHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
