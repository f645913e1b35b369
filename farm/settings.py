"""One `Settings` object, read from the environment when asked for, never at import time.

With nothing set the farm runs on one machine with no servers: everything lives under the data
folder (SQLite, object storage as a folder, the embedded broker). Pointing the URLs at Redis,
PostgreSQL and an S3 endpoint turns the same code into a cluster.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from farm import documents
from farm.errors import InputError

VRAM_MODES = ("auto", "full", "model-offload", "sequential-offload")
COMPILE_SETTINGS = ("off", "on", "force")
# How a prompt longer than 77 tokens once its class word is repeated is cut (farm/identity/
# prompt.py): "reference" as PhotoMaker's pipeline, "keep-end" keeping the end-of-text token.
PROMPT_TRUNCATIONS = ("reference", "keep-end")
# Where a render's starting noise is drawn: "cpu" (the same picture on any device) or "device"
# (on the GPU, as the reference demo does: seed-for-seed comparable with it on that GPU).
NOISE_DEVICES = ("cpu", "device")
MAX_STREAMS = 90  # live progress streams per dashboard process (see Settings.sse_max_streams)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "render-farm"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    models_dir: Path
    database_url: str
    broker_url: str
    storage_url: str
    s3_endpoint_url: str | None = None
    device: str | None = None
    sdxl_base: str | None = None
    # Where live progress events are published; None: the broker's Redis, or no events.
    events_url: str | None = None
    shard_size: int = 4  # renders per shard: one batch on a GPU, one unit of retry
    lease_s: int = 900  # a shard's claim; a live worker's heartbeat renews it
    max_attempts: int = 3  # a shard that fails (or kills its worker) this often ends failed
    visibility_timeout_s: int = 4 * 3600  # must exceed the longest shard, or Redis redelivers
    reap_interval_s: int = 60
    # How long a worker tries again to end a shard while the database is out of reach, before it
    # leaves the shard to its lease (farm/lifecycle.py); keep it well under `lease_s`.
    end_retry_s: int = 30
    log_format: str = "text"  # "json": one object per line, for log shippers (farm/logs.py)
    # Worker slot k serves Prometheus metrics on this port + k; None: no metrics server.
    metrics_port: int | None = None
    # The render path (farm/render/memory.py, acceleration.py): how much of the model stays on
    # the GPU ("auto": from free memory), and whether the UNet is compiled (on: CUDA only).
    vram_mode: str = "auto"
    compile_unet: str = "off"
    prompt_truncation: str = "reference"
    noise: str = "cpu"
    # Renders found by content hash in the project instead of rendered again (farm/reuse.py);
    # off, every job renders all it asks for (after model files were replaced in place, or to
    # measure the farm with the same story again and again).
    reuse_renders: bool = True
    # What one request may cost the dashboard (farm/documents.py, farm/identity/photos.py): a
    # story document's bytes and nesting, the pixels one uploaded photo and one request's
    # photos may decode to.
    document_max_bytes: int = documents.MAX_BYTES
    document_max_depth: int = documents.MAX_DEPTH
    photo_max_pixels: int = 16_000_000
    upload_max_pixels: int = 64_000_000
    # Live progress streams one dashboard process serves at once, and one login of them: each
    # holds a thread, and gunicorn_conf keeps threads for the pages beyond these. At most
    # MAX_STREAMS: each also holds a Redis connection, from redis-py's pool of 100 a process.
    sse_max_streams: int = 24
    sse_max_streams_per_user: int = 6
    # Private ranges a webhook may reach after all (a studio's receiver on its own network),
    # e.g. FARM_WEBHOOK_ALLOW_NETWORKS=10.20.0.0/16,fd12:3456::/48 (farm/webhooks.py).
    webhook_allow_networks: tuple[IPNetwork, ...] = ()
    # Failed dashboard logins per client address and per account within the window, before
    # further logins answer 429 (dashboard/ratelimit.py).
    login_window_s: int = 900
    login_failures_per_address: int = 50
    login_failures_per_account: int = 10
    # Proxies in front of the dashboard that append to X-Forwarded-For (an Ingress: 1); the
    # client address the login limits count is read that many entries from its right.
    trusted_proxies: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("FARM_DATA_DIR") or _default_data_dir(env)).expanduser()
        models_dir = Path(env.get("FARM_MODELS_DIR") or data_dir / "models").expanduser()
        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            database_url=env.get("FARM_DATABASE_URL") or f"sqlite:///{data_dir / 'farm.db'}",
            broker_url=env.get("FARM_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.db'}",
            storage_url=env.get("FARM_STORAGE_URL") or (data_dir / "storage").as_uri(),
            s3_endpoint_url=env.get("FARM_S3_ENDPOINT_URL") or None,
            device=env.get("FARM_DEVICE") or None,
            sdxl_base=env.get("FARM_SDXL_BASE") or None,
            events_url=env.get("FARM_EVENTS_URL") or _redis_of(env.get("FARM_BROKER_URL")),
            shard_size=_int(env, "FARM_SHARD_SIZE", 4, 1, 64),
            lease_s=_int(env, "FARM_LEASE_SECONDS", 900, 10, 86400),
            max_attempts=_int(env, "FARM_MAX_ATTEMPTS", 3, 1, 20),
            visibility_timeout_s=_int(env, "FARM_VISIBILITY_TIMEOUT", 4 * 3600, 60, 7 * 86400),
            reap_interval_s=_int(env, "FARM_REAP_INTERVAL", 60, 1, 3600),
            end_retry_s=_int(env, "FARM_END_RETRY_SECONDS", 30, 0, 3600),
            log_format=_choice(env, "FARM_LOG_FORMAT", ("text", "json")),
            metrics_port=_int(env, "FARM_METRICS_PORT", 0, 0, 65535) or None,
            vram_mode=_choice(env, "FARM_VRAM_MODE", VRAM_MODES),
            compile_unet=_choice(env, "FARM_COMPILE", COMPILE_SETTINGS),
            prompt_truncation=_choice(env, "FARM_PROMPT_TRUNCATION", PROMPT_TRUNCATIONS),
            noise=_choice(env, "FARM_NOISE", NOISE_DEVICES),
            reuse_renders=_choice(env, "FARM_REUSE_RENDERS", ("1", "0")) == "1",
            document_max_bytes=_int(
                env, "FARM_DOCUMENT_MAX_BYTES", documents.MAX_BYTES, 1024, 64 * 1024 * 1024
            ),
            document_max_depth=_int(env, "FARM_DOCUMENT_MAX_DEPTH", documents.MAX_DEPTH, 4, 200),
            photo_max_pixels=_int(env, "FARM_PHOTO_MAX_PIXELS", 16_000_000, 1_000_000, 10**9),
            upload_max_pixels=_int(env, "FARM_UPLOAD_MAX_PIXELS", 64_000_000, 1_000_000, 10**9),
            sse_max_streams=_int(env, "FARM_SSE_MAX_STREAMS", 24, 1, MAX_STREAMS),
            sse_max_streams_per_user=_int(env, "FARM_SSE_MAX_STREAMS_PER_USER", 6, 1, MAX_STREAMS),
            webhook_allow_networks=_networks(env, "FARM_WEBHOOK_ALLOW_NETWORKS"),
            login_window_s=_int(env, "FARM_LOGIN_WINDOW_SECONDS", 900, 1, 86400),
            login_failures_per_address=_int(env, "FARM_LOGIN_FAILURES_PER_ADDRESS", 50, 1, 10**6),
            login_failures_per_account=_int(env, "FARM_LOGIN_FAILURES_PER_ACCOUNT", 10, 1, 10**6),
            trusted_proxies=_int(env, "FARM_TRUSTED_PROXIES", 0, 0, 10),
        )

    @property
    def document_limits(self) -> documents.DocumentLimits:
        return documents.DocumentLimits(self.document_max_bytes, self.document_max_depth)


def _redis_of(broker_url: str | None) -> str | None:
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    return None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive); the first when unset."""
    raw = (env.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs; a host address without a length is that one address."""
    networks = []
    for raw in (env.get(name) or "").split(","):
        if raw.strip():
            try:
                networks.append(ipaddress.ip_network(raw.strip()))
            except ValueError as error:
                raise InputError(
                    f"{name}: {raw.strip()!r} is not a network ({error}); write CIDRs such as "
                    "10.20.0.0/16,fd12:3456::/48"
                ) from None
    return tuple(networks)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
    return value
