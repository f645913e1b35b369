"""Object storage in an S3 bucket (AWS, MinIO, R2, moto): what the machines of a cluster share.

Workers upload renders while the dashboard reads them, often through an S3-compatible server on
the same network that restarts or throttles now and then. So every request here has timeouts and
is retried on transient failures, and what cannot be fixed by retrying is reported as a
`StorageError` that names the bucket, the key and the cause, never a credential or a signed URL.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlparse

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from farm.errors import FarmError, InputError
from farm.storage.base import Storage, StoredObject, check_key

log = logging.getLogger(__name__)

T = TypeVar("T")

# Current bucket naming rules; names outside them cannot be addressed path-style anyway.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# SigV4 refuses presigned URLs that live longer than a week.
_MAX_PRESIGN_S = 7 * 24 * 3600

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "TooManyRequestsException",
        "PriorRequestNotComplete",
    }
)
# HEAD answers carry no body, so a missing key or bucket comes back as a bare "404".
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


class StorageError(FarmError):
    """The object store refused or failed a request in a way that retrying will not fix."""


class StorageUnavailableError(StorageError):
    """The object store kept failing transiently until the attempt budget ran out."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into the bucket and a prefix that ends in '/' (or is '').

    Refusing credentials, ports and queries here keeps secrets out of a URL that is logged and
    shown, and checking the prefix like a key keeps every object under it.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise InputError(f"invalid S3 URL {url!r}: must start with s3://")
    bucket = parsed.netloc
    if "@" in bucket or parsed.query or parsed.fragment:
        # Not echoed: what follows s3:// may be a secret someone tried to pass this way.
        raise InputError(
            "invalid S3 URL: use s3://bucket/prefix only; credentials come from the "
            "AWS_* environment variables or profile, the endpoint from FARM_S3_ENDPOINT_URL"
        )
    if not bucket:
        raise InputError(f"invalid S3 URL {url!r}: it names no bucket; use s3://bucket/prefix")
    if not _BUCKET.match(bucket):
        raise InputError(
            f"invalid S3 URL {url!r}: {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '.', '-')"
        )
    prefix = parsed.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except InputError as exc:
            raise InputError(f"invalid S3 URL {url!r}: bad prefix: {exc}") from None
    return bucket, f"{prefix}/" if prefix else ""


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    """One loader for every client: parsing S3's service model costs ~0.3 s per new session."""
    return botocore.loaders.create_loader()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        return _http_status(exc) in _TRANSIENT_STATUS or _error_code(exc) in _TRANSIENT_CODES
    # Refused or dropped connections, timeouts and bodies cut short: the server may be back soon.
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or ""
        return f"{_http_status(exc)} {_error_code(exc)} {message}".strip()
    return f"{type(exc).__name__}: {exc}"


class S3Storage(Storage):
    """Objects under `s3://bucket/prefix` on AWS or any S3-compatible endpoint.

    Credentials come from the AWS SDK's own chain (AWS_* variables, profiles, roles) so that
    no secret passes through the farm's settings. Addressing is path-style because MinIO, R2 and
    moto need it and AWS still serves it.

    botocore's own retries are switched off and this class retries every request itself: its
    backoff cannot be tuned, and its standard mode shares a retry quota per client that a burst
    of 503s from many upload threads drains, after which nothing is retried at all. One loop
    also makes `max_attempts` mean what it says instead of being multiplied by a second loop.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 8,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_pool_connections: int = 32,
    ) -> None:
        """With the defaults, an endpoint that answers 503 for about 8 s is always survived.

        Waits grow 0.2, 0.4, 0.8 ... s up to `backoff_max_s`, each drawn from its upper half so
        that the total wait has a floor, while the jitter still spreads the retries of many
        workers. `max_pool_connections` is above botocore's 10 because workers upload from
        thread pools.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or None
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        # A session per storage, so credentials are resolved when it is made, not once per process.
        session = botocore.session.get_session()
        session.register_component("data_loader", _shared_loader())
        self.region = region or session.get_config_variable("region") or "us-east-1"
        checksums = "when_supported" if self.endpoint_url is None else "when_required"
        self._client = session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"mode": "standard", "total_max_attempts": 1},
                max_pool_connections=max_pool_connections,
                # botocore >= 1.36 adds CRC checksum headers that AWS checks but several
                # S3-compatible servers (older MinIO, B2, Ceph) refuse; elsewhere, send them
                # only when an operation requires them.
                request_checksum_calculation=checksums,
                response_checksum_validation=checksums,
            ),
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint_url={self.endpoint_url!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self) -> str:
        return f"{self.url} at {self.endpoint_url or 'AWS'} ({self.region})"

    def _backoff_s(self, attempt: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one request with retries; a missing object or bucket comes out as `KeyError`.

        Retrying is safe because every request made here is idempotent (a put replaces the
        whole object). `fn` must do the whole request, reading the body included, so that a
        body cut short is retried like any other transient failure.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    raise KeyError(action) from None
                if not _is_transient(exc):
                    raise StorageError(
                        f"S3 {action} on {self._where()} failed: {_describe(exc)}" + self._hint(exc)
                    ) from exc
                failure: Exception = exc
            except _CREDENTIAL_ERRORS as exc:
                raise StorageError(
                    f"S3 {action} on {self._where()}: no usable AWS credentials ({exc}); set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                ) from exc
            except BotoCoreError as exc:
                if not _is_transient(exc):
                    raise
                failure = exc
            if attempt == self.max_attempts:
                raise StorageUnavailableError(
                    f"S3 {action} on {self._where()} failed {attempt} times in "
                    f"{time.monotonic() - started:.1f} s; last error: {_describe(failure)}"
                ) from failure
            delay = self._backoff_s(attempt)
            log.warning(
                "S3 %s on %s: attempt %d/%d failed (%s); retrying in %.2f s",
                action,
                self.url,
                attempt,
                self.max_attempts,
                _describe(failure),
                delay,
            )
            time.sleep(delay)

    def _hint(self, exc: ClientError) -> str:
        code = _error_code(exc)
        if code == "NoSuchBucket":
            return f"; create bucket {self.bucket!r} first (S3Storage.ensure_bucket)"
        if code in ("AccessDenied", "403"):
            # S3 also answers 403 for a missing key when s3:ListBucket is not granted.
            return "; check the credentials' permissions on the bucket (incl. s3:ListBucket)"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for this endpoint"
        return ""

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists: setup and tests run this, workers never do.

        Asking first lets credentials without s3:CreateBucket pass when the bucket is there, and
        accepting "already owned" keeps two concurrent setups from failing each other.
        """
        try:
            self._call(
                f"HEAD bucket {self.bucket}", lambda: self._client.head_bucket(Bucket=self.bucket)
            )
            return
        except KeyError:
            pass
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}

        def create() -> bool:
            try:
                self._client.create_bucket(**params)
            except ClientError as exc:
                if _error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise
                return False
            return True

        if self._call(f"CREATE bucket {self.bucket}", create):
            log.info("created bucket %s on %s", self.bucket, self.endpoint_url or "AWS")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        name = self._key(key)
        self._call(
            f"PUT {key!r}",
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=name, Body=data, ContentType=content_type
            ),
        )

    def get(self, key: str) -> bytes:
        name = self._key(key)
        try:
            return self._call(
                f"GET {key!r}",
                lambda: self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read(),
            )
        except KeyError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        name = self._key(key)
        try:
            self._call(
                f"HEAD {key!r}", lambda: self._client.head_object(Bucket=self.bucket, Key=name)
            )
        except KeyError:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self._key(key)
        # S3 answers 204 for a missing key too, which is the idempotence the interface promises.
        self._call(
            f"DELETE {key!r}", lambda: self._client.delete_object(Bucket=self.bucket, Key=name)
        )

    def objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Page through the listing as it is consumed, so that a huge prefix costs no memory.

        S3 returns general-purpose bucket listings in UTF-8 byte order, which for these keys is
        the lexicographic order the interface promises; cutting off the common storage prefix
        keeps it.
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = self._call(f"LIST {prefix!r}", lambda: self._client.list_objects_v2(**params))
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                yield StoredObject(key, int(item["Size"]), item["LastModified"])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def url_for(self, key: str, expires_s: int = 3600, download_name: str | None = None) -> str:
        """A presigned GET URL: a bearer token for `expires_s` seconds, so it is never logged.
        With `download_name`, S3 answers with a Content-Disposition that names the file."""
        if not 1 <= expires_s <= _MAX_PRESIGN_S:
            raise InputError(
                f"invalid expires_s {expires_s}: a presigned URL lives 1 to {_MAX_PRESIGN_S} s"
            )
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if download_name is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        return self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
