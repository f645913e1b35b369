"""The webhook a job may name: one POST to the studio's URL when the job finishes.

The URL comes from outside, so delivery is careful with it: only http(s), no redirects
(a redirect could point a worker at an internal address the studio could not name directly),
a short timeout, a few retries on network errors and 5xx answers only, and never an exception
into the caller, which is a worker that has renders to get on with. The body is signed with
HMAC-SHA256 when FARM_WEBHOOK_SECRET is set (as GitHub does), over the timestamp and the body,
so that the receiver can check who sent it and refuse a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from farm.context import Farm
from farm.db.models import Job
from farm.db.queries import job_progress
from farm.errors import InputError

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048  # the jobs.webhook_url column
TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = 1.0  # doubled after each failed attempt
SIGNATURE_HEADER = "X-Farm-Signature"
TIMESTAMP_HEADER = "X-Farm-Timestamp"
_RETRY_STATUSES = {408, 429}  # besides every 5xx


def check_webhook_url(url: str) -> str:
    """Refuse, at submission, a URL that delivery would refuse; the message says what to fix."""
    if len(url) > MAX_URL_LENGTH:
        raise InputError(f"webhook_url is {len(url)} characters; at most {MAX_URL_LENGTH}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"webhook_url {url[:80]!r} must be an http:// or https:// URL with a host, "
            "e.g. https://studio.example/hooks/farm"
        )
    if parts.username or parts.password:
        raise InputError("webhook_url must not carry credentials; check the signature instead")
    return url


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def deliver(
    url: str,
    payload: Mapping[str, Any],
    *,
    secret: str | None,
    attempts: int = ATTEMPTS,
    timeout_s: float = TIMEOUT_S,
    backoff_s: float = BACKOFF_S,
) -> bool:
    """POST `payload` as JSON to `url`; True once a 2xx answers. Never raises."""
    try:
        check_webhook_url(url)
    except InputError as error:
        log.warning("webhook not sent: %s", error)
        return False
    body = json.dumps(payload, default=str).encode()
    delivery = str(uuid.uuid4())
    for attempt in range(1, attempts + 1):
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "render-farm-webhook/1",
            "X-Farm-Event": str(payload.get("event", "")),
            "X-Farm-Delivery": delivery,  # the same on every attempt: receivers can deduplicate
            TIMESTAMP_HEADER: timestamp,
        }
        if secret:
            headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                response.read(1024)
            return True
        except urllib.error.HTTPError as error:
            retry = error.code >= 500 or error.code in _RETRY_STATUSES
            reason = f"HTTP {error.code}"
            if 300 <= error.code < 400:
                reason += " (redirects are not followed)"
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            retry, reason = True, str(getattr(error, "reason", error))
        log.warning("webhook %s attempt %s/%s failed: %s", url, attempt, attempts, reason)
        if not retry or attempt == attempts:
            return False
        time.sleep(backoff_s * 2 ** (attempt - 1))
    return False


def job_finished_payload(job: Job, counts: Mapping[str, int]) -> dict[str, Any]:
    return {
        "event": "job.finished",
        "job": job.id,
        "status": str(job.status),
        "renders_total": job.renders_total,
        "counts": {str(state): n for state, n in counts.items()},
        "error": job.error,
        "finished": job.finished.isoformat() if job.finished else None,
    }


def send_job_webhook(farm: Farm, job_id: str, env: Mapping[str, str] | None = None) -> bool:
    """Tell the job's webhook, if it names one, that the job finished; False if not delivered."""
    with farm.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return False
        url, payload = job.webhook_url, job_finished_payload(job, job_progress(session, job_id))
    secret = (os.environ if env is None else env).get("FARM_WEBHOOK_SECRET") or None
    return deliver(url, payload, secret=secret)
