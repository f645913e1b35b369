"""Login attempts, limited per client address and per account over a sliding window.

A password is chosen by a person and may be guessable; scrypt makes each guess slow, this makes
them few. Failed logins are counted (a person who types their password right is never
slowed), per address (one machine trying many accounts) and per username (many machines
trying one account; unknown usernames count too, so the answer does not tell which exist).
Once a count reaches its limit, logins from that address or for that account answer 429
with `Retry-After` until the oldest failure in the window has aged out, and the password is
not even checked, so a blocked guess costs no scrypt either.

The windows live in the farm's Redis (`Settings.events_url`), shared by every dashboard
process, as sorted sets of failure times trimmed on each check. The embedded farm has no
Redis and one dashboard process, so it keeps the same windows in that process's memory.
A Redis that cannot be reached lets logins through, logged: the limit slows guessing, and
locking every person out while Redis restarts would be worse.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from typing import Any

from flask import current_app, request

from dashboard.context import farm
from farm.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "farm:login-failures:"
# Windows one process keeps without Redis before it drops those that have aged out: failures
# from ever new addresses must not grow the dashboard's memory without end.
MEMORY_WINDOWS = 10_000

# KEYS: the windows; ARGV: now (ms), window (ms), then each window's limit. Trims each window
# and returns the milliseconds until every window is under its limit again (0: go ahead).
_WAIT_SCRIPT = """
local now, window, wait = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count, limit = redis.call('ZCARD', key), tonumber(ARGV[2 + i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
return wait
"""


class LoginLimits:
    """Failed logins per address and per account; `wait_s` says how long a login must wait."""

    def __init__(
        self, window_s: int, per_address: int, per_account: int, redis: Any = None
    ) -> None:
        self.window_s = window_s
        self.limits = {"address": per_address, "account": per_account}
        self._redis = redis
        self._wait = redis.register_script(_WAIT_SCRIPT) if redis is not None else None
        self._memory: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        redis = None
        if settings.events_url is not None:
            import redis as redis_client

            redis = redis_client.Redis.from_url(
                settings.events_url, socket_timeout=2, socket_connect_timeout=2
            )
        return cls(
            settings.login_window_s,
            settings.login_failures_per_address,
            settings.login_failures_per_account,
            redis,
        )

    def _windows(self, address: str, account: str | None) -> list[tuple[str, int]]:
        windows = [(f"{KEY_PREFIX}address:{address}", self.limits["address"])]
        if account:
            windows.append((f"{KEY_PREFIX}account:{account.lower()}", self.limits["account"]))
        return windows

    def wait_s(self, address: str, account: str | None) -> int:
        """Whole seconds until a login from `address` for `account` may be tried; 0: now."""
        windows = self._windows(address, account)
        now = time.time()
        if self._redis is None:
            with self._lock:
                return _seconds(max(self._memory_wait(key, limit, now) for key, limit in windows))
        try:
            keys = [key for key, _ in windows]
            limits = [limit for _, limit in windows]
            waited = self._wait(keys=keys, args=[int(now * 1000), self.window_s * 1000, *limits])
        except Exception as error:  # redis.RedisError and socket errors alike
            log.warning("login limits not checked, Redis unreachable: %s", error)
            return 0
        return _seconds(int(waited) / 1000)

    def failed(self, address: str, account: str | None) -> None:
        """Count one failed login against the address and the account."""
        windows = self._windows(address, account)
        now = time.time()
        if self._redis is None:
            with self._lock:
                if len(self._memory) >= MEMORY_WINDOWS:
                    self._forget_aged(now)
                for key, _ in windows:
                    self._memory.setdefault(key, deque()).append(now)
            return
        try:
            with self._redis.pipeline() as pipe:
                for key, _ in windows:
                    pipe.zadd(key, {uuid.uuid4().hex: int(now * 1000)})
                    pipe.expire(key, self.window_s)
                pipe.execute()
        except Exception as error:
            log.warning("a failed login was not counted, Redis unreachable: %s", error)

    def _forget_aged(self, now: float) -> None:
        aged = [key for key, times in self._memory.items() if times[-1] <= now - self.window_s]
        for key in aged:
            del self._memory[key]

    def _memory_wait(self, key: str, limit: int, now: float) -> float:
        times = self._memory.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._memory[key]
            return 0.0
        if len(times) < limit:
            return 0.0
        return times[len(times) - limit] + self.window_s - now


def _seconds(wait: float) -> int:
    return math.ceil(wait) if wait > 0 else 0


def login_limits() -> LoginLimits:
    """This app's limits, made on first use from its farm's settings."""
    limits = current_app.extensions.get("login_limits")
    if limits is None:
        limits = current_app.extensions["login_limits"] = LoginLimits.from_settings(farm().settings)
    return limits


def client_address() -> str:
    """The address a login comes from. Behind a proxy every request comes from the proxy,
    and one person's typos would lock out everyone; each trusted proxy appends the address it
    saw to X-Forwarded-For, so the entry `trusted_proxies` from the right is the client's
    (entries further left are whatever the client chose to send)."""
    hops = farm().settings.trusted_proxies
    if hops:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")
        seen = [address.strip() for address in forwarded if address.strip()]
        if len(seen) >= hops:
            return seen[-hops]
    return request.remote_addr or "unknown"


def retry_message(wait_s: int) -> str:
    minutes = math.ceil(wait_s / 60)
    when = f"{wait_s} seconds" if wait_s < 120 else f"{minutes} minutes"
    return f"Too many failed logins from here or for this account; try again in {when}."
