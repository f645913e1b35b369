"""The webhook a job may name: one POST to the studio's URL when the job finishes.

The URL comes from outside, and the farm's workers sit inside a network with things a studio
must not reach through them (the cloud's metadata service, Redis, PostgreSQL, other pods). So
the URL is judged twice by one verdict, `check_webhook_url`: when the job is submitted (a
clear 400) and again when the webhook is sent, because a name that pointed outside at submit
may point inside an hour later. At delivery the name is resolved once, every address it gives
is checked, and the connection goes to a checked address, never to a second lookup that a
rebinding DNS server could answer differently. Redirects are never followed: a 3xx answer is a
failed delivery, or a redirect could point the worker at an address the studio could not name.
A studio whose own receiver lives on a private network lists its ranges in
FARM_WEBHOOK_ALLOW_NETWORKS; the metadata addresses stay refused even then.

Delivery has a short timeout, a few retries on network errors and 5xx answers only, and never
raises into the caller, which is a worker that has renders to get on with. The body is signed
with HMAC-SHA256 when FARM_WEBHOOK_SECRET is set (as GitHub does), over the timestamp and the
body, so that the receiver can check who sent it and refuse a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from farm.context import Farm
from farm.db.models import Job
from farm.db.queries import job_progress
from farm.errors import InputError
from farm.settings import IPNetwork, Settings

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048  # the jobs.webhook_url column
TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = 1.0  # doubled after each failed attempt
SIGNATURE_HEADER = "X-Farm-Signature"
TIMESTAMP_HEADER = "X-Farm-Timestamp"
_RETRY_STATUSES = {408, 429}  # besides every 5xx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A host name and port to the addresses they resolve to; tests pass a stub instead of DNS.
Resolve = Callable[[str, int], Sequence[str]]

# The instance metadata services of AWS (v4 and v6), GCP, Azure and Alibaba: refused even
# inside a network FARM_WEBHOOK_ALLOW_NETWORKS opens, since they hand out the node's secrets.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# IPv6 ranges that carry an IPv4 address in their low 32 bits, which is judged as well:
# IPv4-compatible (::a.b.c.d) and the NAT64 well-known prefix.
_CARRY_IPV4 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))


@dataclass(frozen=True)
class WebhookTarget:
    """A judged webhook URL: where to connect (the checked addresses) and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # with the query
    addresses: tuple[str, ...]  # empty: the name did not resolve when it was judged


def resolve_host(host: str, port: int) -> list[str]:
    """Every address DNS gives for `host`, in its order; raises OSError when it gives none."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


def check_webhook_url(
    url: str, settings: Settings, resolve: Resolve = resolve_host
) -> WebhookTarget:
    """The one verdict on a webhook URL, for submission, previews and delivery alike.

    Raises InputError, with what to fix, for a URL that is not plain http(s), carries
    credentials, or names a host any of whose addresses is loopback, private, link-local,
    unspecified, multicast, reserved or a metadata service (outside the networks the settings
    allow). A name that does not resolve now is let through with no addresses: DNS may not be
    set up yet, and delivery judges it again before connecting.
    """
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
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError(f"webhook_url {url[:80]!r} has a port that is not 1 to 65535") from None
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]  # a literal address: no lookup
    except ValueError:
        try:
            addresses = list(resolve(host, port))
        except (OSError, UnicodeError):
            addresses = []
    for address in addresses:
        refusal = _refusal(address, settings.webhook_allow_networks)
        if refusal is not None:
            raise InputError(
                f"webhook_url host {host!r} resolves to {address}, {refusal}; a webhook must "
                "reach a public address (a studio's own network is allowed by listing its "
                "range in FARM_WEBHOOK_ALLOW_NETWORKS)"
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(url, parts.scheme, host, port, path, tuple(addresses))


def _refusal(address: str, allowed: Sequence[IPNetwork]) -> str | None:
    """Why the farm must not connect to `address`, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # fe80::1%eth0: the scope goes
    except ValueError:
        return "which is not an IP address"
    judged = [*_carried_ipv4(ip), ip]  # the IPv4 address inside first: it names the danger
    if any(each in METADATA_ADDRESSES for each in judged):
        return "a cloud metadata service"
    if any(each.version == net.version and each in net for each in judged for net in allowed):
        return None
    for each in judged:
        if each.is_loopback:
            return "a loopback address"
        if each.is_link_local:
            return "a link-local address"
        if each.is_unspecified:
            return "the unspecified address"
        if each.is_multicast:
            return "a multicast address"
        if each.is_private:
            return "a private address"
        if not each.is_global:
            return "an address that is not public"
    return None


def _carried_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, compatible, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if any(ip in net for net in _CARRY_IPV4) and int(ip) > 1:  # :: and ::1 are judged as v6
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _open_socket(addresses: Sequence[str], port: int, timeout_s: float) -> socket.socket:
    """A connection to the first checked address that answers; no name is looked up here."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError as failed:
            error = failed
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the checked addresses, with the URL's host in the Host header."""

    def __init__(self, target: WebhookTarget, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self.addresses = target.addresses

    def connect(self) -> None:
        self.sock = _open_socket(self.addresses, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the checked addresses; the certificate is still verified for the URL's host."""

    def __init__(self, target: WebhookTarget, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self.addresses = target.addresses
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = _open_socket(self.addresses, self.port, self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _post(target: WebhookTarget, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    """One POST to a judged target; its status. http.client follows no redirect by itself."""
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    connection = kind(target, timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read(1024)
        return response.status
    finally:
        connection.close()


def deliver(
    url: str,
    payload: Mapping[str, Any],
    *,
    secret: str | None,
    settings: Settings,
    resolve: Resolve = resolve_host,
    attempts: int = ATTEMPTS,
    timeout_s: float = TIMEOUT_S,
    backoff_s: float = BACKOFF_S,
) -> bool:
    """POST `payload` as JSON to `url`; True once a 2xx answers. Never raises.

    Each attempt judges the URL again, on a fresh lookup, and connects only to the addresses
    that lookup gave and the verdict passed.
    """
    body = json.dumps(payload, default=str).encode()
    delivery = str(uuid.uuid4())
    for attempt in range(1, attempts + 1):
        try:
            target = check_webhook_url(url, settings, resolve)
        except InputError as error:
            log.warning("webhook not sent: %s", error)
            return False
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
        if not target.addresses:
            retry, reason = True, f"host {target.host!r} did not resolve"
        else:
            try:
                status = _post(target, body, headers, timeout_s)
            except (OSError, http.client.HTTPException) as error:
                retry, reason = True, str(error) or type(error).__name__
            else:
                if 200 <= status < 300:
                    return True
                retry = status >= 500 or status in _RETRY_STATUSES
                reason = f"HTTP {status}"
                if 300 <= status < 400:
                    reason += " (redirects are not followed)"
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
    return deliver(url, payload, secret=secret, settings=farm.settings)
