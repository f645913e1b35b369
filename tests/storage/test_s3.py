"""The storage contract on both backends, and what only S3 has: pagination, presigning, faults.

The contract tests run every behaviour against LocalStorage and against S3Storage on a real
(moto) S3 endpoint, so that code written and tested on one machine behaves the same on a cluster.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from farm.errors import InputError
from farm.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    StorageUnavailableError,
    open_storage,
)
from tests.fixtures.s3 import TEST_ACCESS_KEY, TEST_SECRET_KEY, moto_server, new_bucket_name
from tests.fixtures.s3_faults import FaultyProxy, faulty_proxy

BAD_KEYS = ["../x", "/abs", "a//b", "a/./b", "a\\b", "", "a/", "a/../../etc/passwd", "a b"]


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


# --- The contract, on both backends -------------------------------------------------------------


def test_put_get_round_trip_keeps_every_byte(storage: Storage) -> None:
    data = bytes(range(256)) * 4
    storage.put("jobs/j1/renders/s1-v0.png", data, "image/png")
    storage.put("empty.bin", b"")
    assert storage.get("jobs/j1/renders/s1-v0.png") == data
    assert storage.get("empty.bin") == b""


def test_put_replaces_the_object(storage: Storage) -> None:
    storage.put("a.txt", b"first")
    storage.put("a.txt", b"second, longer")
    assert storage.get("a.txt") == b"second, longer"
    assert list(storage.list()) == ["a.txt"]


def test_exists(storage: Storage) -> None:
    assert not storage.exists("a/b.png")
    storage.put("a/b.png", b"x")
    assert storage.exists("a/b.png")
    assert not storage.exists("a/b.pn")


def test_get_of_a_missing_key_raises_key_error(storage: Storage) -> None:
    with pytest.raises(KeyError) as caught:
        storage.get("no/such.png")
    assert caught.value.args == ("no/such.png",)


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put("d/x.bin", b"x")
    storage.delete("d/x.bin")
    assert not storage.exists("d/x.bin")
    storage.delete("d/x.bin")
    storage.delete("never/was.bin")
    with pytest.raises(KeyError):
        storage.get("d/x.bin")


def test_list_filters_by_prefix_in_lexicographic_order(storage: Storage) -> None:
    keys = ["b/4.png", "a/2.png", "ab/3.png", "a/1.png", "a/sub/5.png", "A/0.png"]
    for key in keys:
        storage.put(key, key.encode())
    assert list(storage.list()) == sorted(keys)
    assert list(storage.list("a/")) == ["a/1.png", "a/2.png", "a/sub/5.png"]
    assert list(storage.list("a")) == ["a/1.png", "a/2.png", "a/sub/5.png", "ab/3.png"]
    assert list(storage.list("a/sub/")) == ["a/sub/5.png"]
    assert list(storage.list("zzz")) == []


def test_list_of_an_empty_store_is_empty(storage: Storage) -> None:
    assert list(storage.list()) == []


def test_objects_give_each_key_its_size_and_modification_time(storage: Storage) -> None:
    """What `farm gc` judges and reports by: one listing, with no request per object."""
    before = datetime.now(UTC) - timedelta(seconds=2)  # S3 keeps whole seconds
    storage.put("jobs/j1/renders/0000-v0.png", b"x" * 1000)
    storage.put("jobs/j1/thumbs/0000-v0.webp", b"")
    storage.put("photos/ab/abc", b"photo")
    listed = list(storage.objects("jobs/"))
    assert [(o.key, o.size) for o in listed] == [
        ("jobs/j1/renders/0000-v0.png", 1000),
        ("jobs/j1/thumbs/0000-v0.webp", 0),
    ]
    for stored in listed:
        assert before <= stored.modified <= datetime.now(UTC) + timedelta(seconds=2)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_by_every_operation(storage: Storage, key: str) -> None:
    for operation in (
        lambda: storage.put(key, b"x"),
        lambda: storage.get(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.url_for(key),
    ):
        with pytest.raises(InputError, match="invalid object key"):
            operation()
    assert list(storage.list()) == []


def test_url_for_downloads_the_object_with_a_plain_http_client(storage: Storage) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(1000)
    storage.put("jobs/j1/renders/s1-v0.png", data, "image/png")
    assert _download(storage.url_for("jobs/j1/renders/s1-v0.png", expires_s=60)) == data


# --- S3 only ------------------------------------------------------------------------------------


def test_a_presigned_download_is_saved_under_the_name_asked_for(s3_storage: Storage) -> None:
    s3_storage.put("jobs/j1/comic/comic.pdf", b"%PDF-1.4", "application/pdf")
    url = s3_storage.url_for("jobs/j1/comic/comic.pdf", 60, download_name="newton-ch1-comic.pdf")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"%PDF-1.4"
        disposition = response.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="newton-ch1-comic.pdf"'


def test_url_is_presigned_with_the_expiry_and_serves_the_content_type(
    s3_storage: S3Storage,
) -> None:
    s3_storage.put("r/p.png", b"png bytes", "image/png")
    url = s3_storage.url_for("r/p.png", expires_s=120)
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["120"]
    assert "X-Amz-Signature" in query
    assert urlparse(url).path == f"/{s3_storage.bucket}/farm/r/p.png"  # path-style, prefixed
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert response.read() == b"png bytes"


@pytest.mark.parametrize("expires_s", [0, -1, 7 * 24 * 3600 + 1])
def test_url_expiry_outside_what_sigv4_allows_is_refused(
    s3_storage: S3Storage, expires_s: int
) -> None:
    with pytest.raises(InputError, match="expires_s"):
        s3_storage.url_for("a.png", expires_s=expires_s)


@pytest.mark.slow  # moto answers ~100 requests/s whatever the client's concurrency
def test_list_pages_past_1000_keys(s3_storage: S3Storage) -> None:
    keys = [f"many/{i:05d}.bin" for i in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3_storage.put(key, b"."), keys))
    s3_storage.put("other/z.bin", b".")
    assert list(s3_storage.list("many/")) == keys
    assert len(list(s3_storage.list())) == 1006
    assert list(s3_storage.list("many/0100")) == [f"many/0100{i}.bin" for i in range(5)]


def test_storages_under_different_prefixes_do_not_see_each_other(s3_server: str) -> None:
    bucket = new_bucket_name()
    root = S3Storage(f"s3://{bucket}", endpoint_url=s3_server)
    root.ensure_bucket()
    one = S3Storage(f"s3://{bucket}/one/", endpoint_url=s3_server)
    two = S3Storage(f"s3://{bucket}/two", endpoint_url=s3_server)
    one.put("k.bin", b"1")
    two.put("k.bin", b"2")
    assert (one.get("k.bin"), two.get("k.bin")) == (b"1", b"2")
    assert list(one.list()) == ["k.bin"]
    assert list(root.list()) == ["one/k.bin", "two/k.bin"]
    one.delete("k.bin")
    assert two.exists("k.bin")


def test_ensure_bucket_creates_once_and_is_idempotent(s3_server: str) -> None:
    storage = S3Storage(f"s3://{new_bucket_name()}/p", endpoint_url=s3_server)
    storage.ensure_bucket()
    storage.ensure_bucket()
    storage.put("x", b"x")
    assert storage.get("x") == b"x"


def test_ensure_bucket_outside_us_east_1_sets_the_location(s3_server: str) -> None:
    storage = S3Storage(f"s3://{new_bucket_name()}", endpoint_url=s3_server, region="eu-west-1")
    storage.ensure_bucket()
    storage.put("x", b"x")
    assert storage.get("x") == b"x"


def test_a_missing_bucket_is_a_clear_error_not_a_missing_key(s3_server: str) -> None:
    storage = S3Storage(f"s3://{new_bucket_name()}/p", endpoint_url=s3_server)
    with pytest.raises(StorageError, match=r"NoSuchBucket.*ensure_bucket"):
        storage.put("x", b"x")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        list(storage.list())


def test_region_comes_from_the_aws_chain_and_defaults_to_us_east_1(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert S3Storage("s3://some-bucket", endpoint_url=s3_server).region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert S3Storage("s3://some-bucket", endpoint_url=s3_server).region == "eu-central-1"


def test_missing_credentials_are_a_clear_error(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage(f"s3://{new_bucket_name()}", endpoint_url=s3_server)
    with pytest.raises(StorageError, match=r"no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        storage.put("k", b"v")


def test_open_storage_gives_s3_storage_on_the_endpoint(s3_server: str) -> None:
    bucket = new_bucket_name()
    storage = open_storage(f"s3://{bucket}/farm/data/", s3_endpoint_url=s3_server)
    assert isinstance(storage, S3Storage)
    assert (storage.url, storage.prefix, storage.endpoint_url) == (
        f"s3://{bucket}/farm/data",
        "farm/data/",
        s3_server,
    )
    storage.ensure_bucket()
    storage.put("k", b"v")
    assert storage.get("k") == b"v"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Bad_Bucket/p", "not a valid bucket name"),
        ("s3://ab/p", "not a valid bucket name"),
        ("s3://bucket/a/../b", "bad prefix"),
        ("s3://bucket/a//b", "bad prefix"),
        ("s3://bucket/p?versionId=1", "s3://bucket/prefix only"),
        (f"s3://{TEST_ACCESS_KEY}:{TEST_SECRET_KEY}@bucket/p", "s3://bucket/prefix only"),
    ],
)
def test_bad_s3_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        open_storage(url)
    assert TEST_SECRET_KEY not in str(caught.value)


# --- Transient faults, through a proxy in front of a throwaway moto server -----------------------


@pytest.fixture(scope="module")
def fault_upstream(aws_test_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second moto server, so that the fault tests never disturb the shared one."""
    with moto_server(tmp_path_factory.mktemp("moto-faults") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def proxy(fault_upstream: str) -> Iterator[FaultyProxy]:
    with faulty_proxy(fault_upstream) as server:
        yield server


def _through(
    proxy: FaultyProxy,
    *,
    max_attempts: int = 4,
    backoff_base_s: float = 0.01,
    backoff_max_s: float = 0.05,
) -> S3Storage:
    """A storage on a new bucket, reached through `proxy`; fast retries unless told otherwise."""
    bucket = new_bucket_name()
    S3Storage(f"s3://{bucket}", endpoint_url=f"http://{proxy.upstream.netloc}").ensure_bucket()
    return S3Storage(
        f"s3://{bucket}/p",
        endpoint_url=proxy.endpoint,
        max_attempts=max_attempts,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        connect_timeout_s=1.0,
        read_timeout_s=0.3,
    )


@pytest.mark.parametrize("fault", ["503", "slowdown", "500", "drop", "hang"])
def test_transient_faults_are_retried_until_the_request_succeeds(
    proxy: FaultyProxy, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _through(proxy)
    data = bytes(range(256)) * 100
    caplog.set_level(logging.DEBUG, logger="farm")

    proxy.arm(fault, count=3)
    storage.put("jobs/j/r.png", data, "image/png")
    assert (proxy.failed, proxy.requests) == (3, 4)

    proxy.arm(fault, count=3)
    assert storage.get("jobs/j/r.png") == data
    assert (proxy.failed, proxy.requests) == (3, 4)

    proxy.arm(fault, count=2)
    assert list(storage.list()) == ["jobs/j/r.png"]
    assert storage.exists("jobs/j/r.png")
    assert proxy.failed == 2

    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 8
    url = storage.url_for("jobs/j/r.png")
    for secret in (TEST_SECRET_KEY, parse_qs(urlparse(url).query)["X-Amz-Signature"][0]):
        assert secret not in caplog.text


def test_more_failures_than_the_attempt_budget_raise_a_clear_error(proxy: FaultyProxy) -> None:
    storage = _through(proxy)
    proxy.arm("503", count=100)
    with pytest.raises(StorageUnavailableError) as caught:
        storage.put("jobs/j/r.png", b"x")
    message = str(caught.value)
    assert "PUT 'jobs/j/r.png'" in message
    assert storage.url in message
    assert "failed 4 times" in message
    assert "503 ServiceUnavailable" in message
    assert proxy.requests == 4

    proxy.arm("drop", count=100)
    with pytest.raises(StorageUnavailableError, match=r"GET 'jobs/j/r\.png'.*failed 4 times"):
        storage.get("jobs/j/r.png")


def test_errors_that_retrying_cannot_fix_are_not_retried(proxy: FaultyProxy) -> None:
    storage = _through(proxy)
    proxy.arm("403", count=100)
    with pytest.raises(StorageError, match="403 AccessDenied") as caught:
        storage.put("k", b"x")
    assert not isinstance(caught.value, StorageUnavailableError)
    assert proxy.requests == 1


@pytest.mark.slow
def test_default_settings_ride_out_a_two_second_outage(proxy: FaultyProxy) -> None:
    storage = _through(proxy, max_attempts=8, backoff_base_s=0.2, backoff_max_s=5.0)
    proxy.arm("503", seconds=2.0)
    started = time.monotonic()
    storage.put("k", b"survived")
    assert time.monotonic() - started >= 2.0
    assert storage.get("k") == b"survived"
    assert proxy.failed >= 2
