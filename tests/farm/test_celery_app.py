"""The Celery app's settings for long GPU tasks: a lost worker must give its shard back, and one
worker must never hold more than the shard it renders."""

from __future__ import annotations

import pytest

from farm.queue.app import CONTROL_QUEUE, MAX_PRIORITY, REAP, make_celery
from farm.settings import Settings


def settings(broker_url: str) -> Settings:
    return Settings.from_env(
        {
            "FARM_DATA_DIR": "/nonexistent/farm",
            "FARM_BROKER_URL": broker_url,
            "FARM_VISIBILITY_TIMEOUT": "7200",
            "FARM_REAP_INTERVAL": "15",
        }
    )


def test_tasks_are_acknowledged_after_the_work_one_at_a_time():
    conf = make_celery(settings("redis://broker:6379/0"), ["tiny"]).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert (conf.worker_prefetch_multiplier, conf.worker_concurrency) == (1, 1)
    assert [q.name for q in conf.task_queues] == [CONTROL_QUEUE, "render.tiny"]
    assert {q.queue_arguments["x-max-priority"] for q in conf.task_queues} == {MAX_PRIORITY}
    reaper = conf.beat_schedule["reap-expired-leases"]
    assert (reaper["task"], reaper["schedule"]) == (REAP, 15)


@pytest.mark.parametrize("url", ["redis://broker:6379/0", "rediss://broker:6380/0"])
def test_redis_gets_the_visibility_timeout_and_priority_lists(url):
    options = make_celery(settings(url), ["tiny"]).conf.broker_transport_options
    assert options["visibility_timeout"] == 7200  # longer than a shard, or Redis redelivers it
    assert options["queue_order_strategy"] == "priority"
    assert options["priority_steps"] == list(range(MAX_PRIORITY + 1))


def test_other_brokers_get_no_redis_options():
    app = make_celery(settings("sqla+sqlite:////nonexistent/broker.db"))
    assert app.conf.broker_transport_options == {}
    assert [q.name for q in app.conf.task_queues] == [CONTROL_QUEUE]  # no preset hosted
