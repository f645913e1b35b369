"""Fixtures the operations tests share with the farm tests: the dlib face analyzer (one per
session) and a single torch thread for in-process renders on a small machine."""

from __future__ import annotations

from tests.farm.conftest import (
    faces,  # noqa: F401  (a fixture of these tests)
    one_torch_thread,  # noqa: F401  (a fixture of these tests)
)
