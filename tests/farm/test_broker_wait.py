"""A worker whose broker cannot be reached says so once, in one line naming the URL (its
password masked), keeps trying with a backoff and reminds now and then, and starts once the
broker answers: here a real redis-server of the test's own, started while the worker waits."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from tests.fixtures.farm_cluster import RedisServer
from workers import broker_wait
from workers.broker_wait import broker_answers, wait_for_broker


class FakeClock:
    """The wait's clock and sleep: sleeping moves the clock, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1


def test_an_unreachable_broker_is_said_once_then_reminded_until_it_answers(tmp_path: Path, caplog):
    server = RedisServer(tmp_path / "redis")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
    clock = FakeClock()
    tries: list[float] = []

    def answers(checked: str) -> str | None:
        tries.append(clock.now)
        if clock.now >= 1500 and server.process is None:  # 25 min in, the broker comes up
            server.start(persistent=False)
        return broker_answers(checked)

    caplog.set_level(logging.WARNING, logger=broker_wait.__name__)
    try:
        assert wait_for_broker(url, answers=answers, clock=clock, sleep=clock.sleep)
    finally:
        server.stop()

    lines = [record.getMessage() for record in caplog.records]
    shown = f"redis://:***@127.0.0.1:{server.port}/0"
    assert "s3cret" not in "\n".join(lines)
    assert lines[0].startswith(f"cannot reach the broker at {shown} (Error 111 connecting")
    assert [line.split(" after ")[1].split(" (")[0] for line in lines[1:-1]] == [
        "10 min",
        "20 min",
    ]
    assert lines[-1].startswith(f"the broker at {shown} answered after 1")
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:4] == [1, 2, 4, 8] and max(gaps) == 60  # backs off, to a minute at most


def test_a_url_without_a_password_is_shown_as_it_is(caplog):
    caplog.set_level(logging.WARNING, logger=broker_wait.__name__)
    assert not wait_for_broker(
        "redis://127.0.0.1:9/0", answers=lambda _: "refused", stopped=lambda: True
    )
    assert [r.getMessage() for r in caplog.records] == [
        "cannot reach the broker at redis://127.0.0.1:9/0 (refused); retrying, every 60 s at most"
    ]
