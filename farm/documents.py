"""Documents from outside (API bodies, story files, JSON or YAML), read at a bounded cost.

Python's parsers pay for a hostile document before they can refuse it: `json.loads` recurses
once per nesting level (100,000 levels: a `RecursionError` after seconds), PyYAML's constructor
does too, and a YAML alias expands each time it is named, so a 600-byte file of nested aliases
builds millions of objects. So every document is measured first, in time linear in its bytes
and with nothing built: its size, then its nesting depth (a scan that stops at the limit), and
for YAML its anchors and aliases, which a story never needs. Only then is it parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from farm.errors import InputError

MAX_BYTES = 4 * 1024 * 1024  # 10,000 scenes with long prompts fit
MAX_DEPTH = 32  # a story is 3 levels deep: the story, its scenes, a scene

# A JSON string with its escapes; what is left outside strings holds every bracket that counts.
# Possessive, and an unterminated string runs to the end: every match that starts succeeds, so
# the scan stays linear on hostile input (json.loads then reports the unterminated string).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[[ord("["), ord("{")]] = 1
_OPENERS[[ord("]"), ord("}")]] = -1
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where it is built


@dataclass(frozen=True)
class DocumentLimits:
    """How large and how deeply nested a document may be (Settings.document_limits)."""

    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH


DEFAULT_LIMITS = DocumentLimits()


def parse_json(raw: bytes, source: str, limits: DocumentLimits) -> Any:
    """A JSON document, after its size and depth are checked; every refusal is an InputError."""
    check_size(len(raw), source, limits)
    _check_json_depth(raw, source, limits.max_depth)
    try:
        return json.loads(raw)
    except ValueError as error:
        raise _invalid_json(error, source) from None


def parse_document(raw: bytes, source: str, limits: DocumentLimits) -> Any:
    """A story file, JSON or YAML whatever its name says.

    JSON first for a file that starts like JSON: it is stricter, and its errors are the helpful
    ones for a file that is JSON; such a file that YAML reads (`{name: x}`) is still YAML.
    """
    check_size(len(raw), source, limits)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{source}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    if not text.lstrip().startswith(("{", "[")):
        return _parse_yaml(text, source, limits.max_depth)
    _check_json_depth(raw, source, limits.max_depth)
    try:
        return json.loads(raw)
    except ValueError as json_error:
        try:
            return _parse_yaml(text, source, limits.max_depth)
        except InputError:
            raise _invalid_json(json_error, source) from None


def check_size(size: int, source: str, limits: DocumentLimits) -> None:
    if size > limits.max_bytes:
        raise InputError(
            f"{source}: {size:,} bytes is over the {limits.max_bytes:,}-byte limit for a "
            "document; split the story into several jobs"
        )


def _check_json_depth(raw: bytes, source: str, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` without building anything: strings are cut out
    (brackets inside them do not count), then the brackets' running sum is the depth."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    if brackets.size and int(np.cumsum(_OPENERS[brackets], dtype=np.int64).max()) > max_depth:
        raise _too_deep(source, max_depth)


def _parse_yaml(text: str, source: str, max_depth: int) -> Any:
    try:
        _check_yaml_events(text, source, max_depth)
    except yaml.YAMLError as error:
        raise InputError(f"{source}: {_describe_yaml_error(error)}") from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader
    except yaml.YAMLError as error:
        raise InputError(f"{source}: {_describe_yaml_error(error)}") from None
    except ValueError as error:  # an integer of more than 4,300 digits, a bad date
        raise InputError(f"{source}: invalid YAML: {error}") from None


def _check_yaml_events(text: str, source: str, max_depth: int) -> None:
    """Walk the parser's events (a state machine with its own stack, no recursion, nothing
    built) and stop at the first level too deep or the first anchor or alias."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise InputError(
                f"{source}: line {mark.line + 1}, column {mark.column + 1}: YAML anchors and "
                "aliases (&name, *name) are not allowed in a story; write the value out"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise _too_deep(source, max_depth)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _invalid_json(error: ValueError, source: str) -> InputError:
    if isinstance(error, json.JSONDecodeError):
        where = f"line {error.lineno}, column {error.colno}"
        return InputError(f"{source}: {where}: invalid JSON: {error.msg}")
    return InputError(f"{source}: invalid JSON: {error}")  # not UTF-8, a 5,000-digit number


def _too_deep(source: str, max_depth: int) -> InputError:
    return InputError(
        f"{source}: nested more than {max_depth} levels deep; a story needs 3 "
        "(the story, its scenes, a scene)"
    )


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
