"""`/api/v1/characters`: real photos make a character; every bad upload is a 400 that names the
photo and the problem, and leaves no row and no stored object behind."""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from tests.fixtures.dashboard import Studio, photo_files


def image_bytes(size: tuple[int, int], kind: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(buffer, format=kind)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def upload(studio: Studio, who: str = "a-artist", **fields: Any) -> Any:
    data = {"name": "Newton", "class_word": "man", **fields}
    return studio.call("POST", "/api/v1/characters", who, data=data)


def test_photos_make_a_character_with_face_boxes(studio: Studio):
    response = upload(studio, photos=photo_files("newton_1.jpg", "newton_3.jpg"))

    assert response.status_code == 201, response.json
    character = response.json
    assert character["name"] == "Newton" and character["trigger"] == "img"
    assert [p["name"] for p in character["photos"]] == ["newton_1.jpg", "newton_3.jpg"]
    for photo in character["photos"]:
        x0, y0, x1, y1 = photo["face_box"]
        assert 0 <= x0 < x1 <= photo["width"] and 0 <= y0 < y1 <= photo["height"]
        served = studio.call("GET", photo["url"].removeprefix("http://localhost"))
        assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert studio.call("GET", f"/api/v1/characters/{character['id']}").json == character
    listed = studio.call("GET", "/api/v1/characters", "a-viewer").json
    assert listed["total"] == 1 and listed["items"] == [character]


def test_object_keys_never_come_from_file_names(studio: Studio):
    stream, _ = photo_files("newton_1.jpg")[0]
    response = upload(studio, photos=[(stream, "../../etc/passwd\x01.jpg")])

    assert response.status_code == 201
    assert response.json["photos"][0]["name"] == "passwd.jpg"
    assert all(re.fullmatch(r"photos/[0-9a-f]{2}/[0-9a-f]{64}", key) for key in studio.stored())


def test_the_same_photos_again_give_the_same_character(studio: Studio):
    first = upload(studio, photos=photo_files("newton_1.jpg")).json
    again = upload(studio, photos=photo_files("newton_1.jpg")).json
    other_team = upload(studio, "b-artist", photos=photo_files("newton_1.jpg")).json

    assert again["id"] == first["id"]
    assert other_team["id"] != first["id"]  # a team never gets another team's character


def one(data: bytes, name: str) -> list[tuple[io.BytesIO, str]]:
    return [(io.BytesIO(data), name)]


# Fields are made when the test runs: a file object is read once, by one request.
BAD_UPLOADS = {
    "text": (lambda: {"photos": one(b"hello", "face.jpg")}, "not a readable JPEG, PNG or WebP"),
    "empty": (lambda: {"photos": one(b"", "empty.jpg")}, "the file is empty"),
    "no-face": (lambda: {"photos": one(image_bytes((256, 256)), "wall.jpg")}, "no face found"),
    "too-small": (lambda: {"photos": one(image_bytes((32, 32)), "tiny.jpg")}, "too small"),
    "gif": (lambda: {"photos": one(image_bytes((90, 90), "GIF"), "a.gif")}, "not a readable"),
    "bomb": (lambda: {"photos": one(png_claiming(60000, 60000), "bomb.png")}, "megapixel"),
    "no-photos": (lambda: {"photos": []}, "needs 1 to 16 photos"),
    "17-photos": (lambda: {"photos": photo_files(*["newton_1.jpg"] * 17)}, "at most 16"),
    "two-word-class": (
        lambda: {"class_word": "old man", "photos": photo_files("newton_1.jpg")},
        "class_word",
    ),
    "trigger-is-class": (
        lambda: {"trigger": "man", "photos": photo_files("newton_1.jpg")},
        "must differ",
    ),
    "no-name": (lambda: {"name": "", "photos": photo_files("newton_1.jpg")}, "name"),
    "nul": (lambda: {"name": "Ne\x00wton", "photos": photo_files("newton_1.jpg")}, "NUL"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_are_400_and_store_nothing(studio: Studio, case: str):
    fields, message = BAD_UPLOADS[case]
    before = studio.rows()

    response = upload(studio, **fields())

    assert response.status_code == 400
    assert message in response.json["error"]
    assert studio.rows() == before
    assert studio.stored() == []


def test_every_rejected_photo_is_named_with_its_reason(studio: Studio):
    photos = [
        *photo_files("newton_1.jpg"),
        (io.BytesIO(b"not an image"), "notes.jpg"),
        (io.BytesIO(image_bytes((256, 256))), "wall.jpg"),
    ]
    response = upload(studio, photos=photos)

    assert response.status_code == 400
    error = response.json["error"]
    assert "'notes.jpg': not a readable" in error and "'wall.jpg': no face found" in error
    assert "newton_1.jpg" not in error
    assert studio.stored() == []


def test_an_upload_over_the_size_limit_is_413(studio: Studio):
    studio.app.config["MAX_CONTENT_LENGTH"] = 50_000
    response = upload(studio, photos=photo_files("newton_0.jpg"))  # a few hundred kB

    assert response.status_code == 413
    assert "larger than" in response.json["error"]
    assert studio.rows()["characters"] == 0


def test_deleting_hides_the_character(studio: Studio):
    character_id = upload(studio, photos=photo_files("newton_1.jpg")).json["id"]

    assert studio.call("DELETE", f"/api/v1/characters/{character_id}").status_code == 204

    assert studio.call("GET", f"/api/v1/characters/{character_id}").status_code == 404
    assert studio.call("GET", "/api/v1/characters").json["total"] == 0
    assert studio.call("DELETE", f"/api/v1/characters/{character_id}").status_code == 404


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "offset=-1", "limit=x", "colour=red"])
def test_bad_paging_is_400(studio: Studio, query: str):
    response = studio.call("GET", f"/api/v1/characters?{query}")
    assert response.status_code == 400
    assert response.json["error"].startswith("query.")
