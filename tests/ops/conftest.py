"""Fixtures the operations tests share with the farm tests (the dlib face analyzer, a single
torch thread for in-process renders, a migrated farm on each backend), and the farm's JSON log
lines captured in a buffer."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from farm.logs import FarmHandler, configure_logging, set_process_context
from tests.farm.conftest import (
    faces,  # noqa: F401  (a fixture of these tests)
    farm,  # noqa: F401  (a fixture of these tests)
    one_torch_thread,  # noqa: F401  (a fixture of these tests)
)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The farm's handler on the root logger, writing JSON into a buffer; removed after."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    configure_logging(logging.INFO, "json", stream=buffer)
    yield buffer
    for handler in [h for h in root.handlers if isinstance(h, FarmHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    set_process_context()
