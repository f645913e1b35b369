"""What only the local-folder backend and `open_storage` promise; the shared contract is run on
both backends in test_s3.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from farm.errors import InputError
from farm.storage import LocalStorage, open_storage


def test_url_for_is_a_file_url_of_the_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("jobs/j1/r.png", b"png")
    url = storage.url_for("jobs/j1/r.png")
    assert urlparse(url).scheme == "file"
    assert Path(url2pathname(urlparse(url).path)) == tmp_path.resolve() / "jobs" / "j1" / "r.png"


def test_put_leaves_no_partial_files_behind(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for i in range(3):
        storage.put("a/b.bin", bytes([i]) * 10)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]


def test_list_skips_hidden_files_such_as_interrupted_writes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b.bin", b"x")
    (tmp_path / "a" / ".b.bin.x1y2.part").write_bytes(b"half")
    assert list(storage.list()) == ["a/b.bin"]


def test_open_storage_accepts_file_urls_and_bare_paths(tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    by_url = open_storage(folder.as_uri())
    by_path = open_storage(str(folder))
    assert isinstance(by_url, LocalStorage) and isinstance(by_path, LocalStorage)
    assert by_url.root == by_path.root == folder.resolve()
    by_url.put("k.bin", b"v")
    assert by_path.get("k.bin") == b"v"


def test_open_storage_ignores_the_s3_endpoint_for_a_folder(tmp_path: Path) -> None:
    storage = open_storage(tmp_path.as_uri(), s3_endpoint_url="http://127.0.0.1:9000")
    assert isinstance(storage, LocalStorage)


@pytest.mark.parametrize("url", ["gs://bucket/p", "https://user:hunter2@example.com/p", "ftp://h"])
def test_open_storage_refuses_other_schemes_without_echoing_them(url: str) -> None:
    with pytest.raises(InputError, match="unsupported storage URL scheme") as caught:
        open_storage(url)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # what callers of the first version caught


def test_a_local_farm_does_not_import_the_s3_client() -> None:
    code = "import sys, farm.storage; print('botocore' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """`farm render`, `fetch` and `comic --out` write through LocalStorage: their files must be
    as readable as any other file the user makes (0644 under umask 022), not 0600."""
    previous = os.umask(umask)
    try:
        LocalStorage(tmp_path).put("jobs/a/0000-v0.png", b"png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "jobs/a/0000-v0.png").stat().st_mode) == 0o666 & ~umask
