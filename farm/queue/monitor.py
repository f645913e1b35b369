"""The farm's Celery app for Celery's own tools, which want an app at module level:

    celery -A farm.queue.monitor flower --address=127.0.0.1 --port=5555
    celery -A farm.queue.monitor inspect active
    celery -A farm.queue.monitor events

The app is built from the FARM_* settings when this module is imported, which only these
tools do; the farm itself never imports it. It carries the farm's broker options, so Flower
counts Redis's priority lists as the farm lays them out, and nothing heavy: no model, no
worker code.
"""

from __future__ import annotations

from farm.queue.app import make_celery
from farm.settings import Settings

app = make_celery(Settings.from_env())
