"""Hostile input costs a 4xx, quickly, and writes nothing: nested and huge documents, YAML
aliases, control characters, webhook URLs a preview must judge as submission does, and photos
that would decode to more pixels than one request may."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tests.fixtures.dashboard import Studio, make_character, story_body


@pytest.fixture
def artist(studio: Studio) -> tuple[FlaskClient, str]:
    client = studio.client()
    return client, studio.log_in(client, "a-artist")


def deep_json(levels: int) -> bytes:
    return b'{"character_id": 1, "scenes": ' + b"[" * levels + b"]" * levels + b"}"


# Documents --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/api/v1/jobs", "/api/v1/jobs/plan"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (deep_json(100_000), "body: nested more than 32 levels deep"),
        (b'{"scenes": "' + b"x" * (4 * 1024 * 1024) + b'"}', "-byte limit for a document"),
        (b'{"character_id": ' + b"9" * 5000 + b"}", "body: invalid JSON"),
        (b'{"character_id": 1, "scenes": [\xff]}', "body: invalid JSON"),
    ],
    ids=["100000-deep", "over-4-MiB", "5000-digit-number", "not-utf8"],
)
def test_hostile_json_bodies_are_400_at_once(studio: Studio, route: str, body: bytes, message):
    before = studio.rows()
    started = time.perf_counter()

    response = studio.call("POST", route, data=body, headers={"Content-Type": "application/json"})

    assert time.perf_counter() - started < 1.0
    assert response.status_code == 400 and message in response.json["error"]
    assert studio.rows() == before and not studio.tasks.sent


BILLION_LAUGHS = (
    b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
        for i in range(8)
    )
)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"scenes:\n" + b"- " * 20_000 + b"x\n", "story file: nested more than 32 levels deep"),
        (BILLION_LAUGHS, "YAML anchors and aliases (&amp;name, *name) are not allowed"),
        (deep_json(20_000), "story file: nested more than 32 levels deep"),
    ],
    ids=["yaml-20000-deep", "billion-laughs", "json-20000-deep"],
)
def test_hostile_story_files_are_400_at_once(studio: Studio, artist, raw: bytes, message: str):
    client, csrf = artist
    form = {
        "csrf_token": csrf,
        "source": "file",
        "character_id": str(make_character(studio)),
        "story_file": (io.BytesIO(raw), "story.yaml"),
    }
    before = studio.rows()
    started = time.perf_counter()

    response = client.post("/stories/new", data=form)

    assert time.perf_counter() - started < 1.0
    assert response.status_code == 400 and message in response.text
    assert studio.rows() == before and not studio.tasks.sent


# Control characters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/workers/%00"),
        ("GET", "/api/v1/jobs/%01x"),
        ("GET", "/api/v1/jobs?status=queued%00"),
        ("GET", "/api/v1/characters?x%00=1"),
    ],
)
def test_control_characters_in_api_paths_and_queries_are_400(studio: Studio, method, path):
    before = studio.rows()

    response = studio.call(method, path, "a-admin")

    assert response.status_code == 400, response.text
    assert "control character" in response.json["error"]
    assert studio.rows() == before


def test_control_characters_in_pages_and_form_fields_are_400_pages(studio: Studio, artist):
    client, csrf = artist
    character_id = make_character(studio)
    before = studio.rows()

    page = client.get("/jobs?status=%00")
    form = {
        "csrf_token": csrf,
        "character_id": str(character_id),
        "preset": "tiny",
        "width": "64",
        "height": "64",
        "scenes": "a man img\treading\r\na man img\x00sleeping",
    }
    posted = client.post("/stories/new", data=form)
    named = client.post(
        "/api/v1/characters",
        data={"name": "New\x1bton", "class_word": "man"},
        headers={"X-CSRF-Token": csrf},
    )

    assert page.status_code == 400 and "<html" in page.text and "control character" in page.text
    assert posted.status_code == 400 and "field &#39;scenes&#39;" in posted.text
    assert named.status_code == 400 and "control character" in named.json["error"]
    assert studio.rows() == before and not studio.tasks.sent


# Webhooks: the preview's verdict is the submission's --------------------------------------------

WEBHOOKS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:6379/",
    "http://10.0.0.7/hooks",
    "http://[::1]/hooks",
    "https://studio.example/hooks/farm",
    "ftp://studio.example/hooks",
]


@pytest.mark.parametrize("url", WEBHOOKS)
def test_the_story_preview_judges_a_webhook_as_submission_does(studio: Studio, artist, url: str):
    client, csrf = artist
    form = {
        "csrf_token": csrf,
        "character_id": str(make_character(studio)),
        "preset": "tiny",
        "width": "64",
        "height": "64",
        "scenes": "a man img reading",
        "webhook_url": url,
    }

    preview = client.post("/stories/preview", data=form, headers={"X-CSRF-Token": csrf})
    submitted = client.post("/stories/new", data=form)

    assert (preview.status_code, submitted.status_code) in ((200, 302), (400, 400))
    if preview.status_code == 400:
        assert preview.json["error"] in submitted.text.replace("&#39;", "'")


@pytest.mark.parametrize("url", WEBHOOKS)
def test_the_api_plan_judges_a_webhook_as_submission_does(studio: Studio, url: str):
    body = story_body(make_character(studio), webhook_url=url)

    planned = studio.call("POST", "/api/v1/jobs/plan", json=body)
    submitted = studio.call("POST", "/api/v1/jobs", json=body)

    assert (planned.status_code, submitted.status_code) in ((200, 201), (400, 400))
    if planned.status_code == 400:
        assert planned.json == submitted.json


def test_the_api_plan_refuses_a_priority_submission_would(studio: Studio):
    body = story_body(make_character(studio), priority=10)

    planned = studio.call("POST", "/api/v1/jobs/plan", json=body)

    assert planned.status_code == 400 and "priority" in planned.json["error"]


# Photos -----------------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A plain PNG: a few kB on the wire, `width` x `height` pixels once decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 180, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(studio: Studio, photos: list[bytes]) -> Any:
    files = [(io.BytesIO(data), f"p{i}.png") for i, data in enumerate(photos)]
    return studio.call(
        "POST", "/api/v1/characters", data={"name": "N", "class_word": "man", "photos": files}
    )


def test_photos_over_the_request_pixel_cap_are_400_before_any_is_decoded(studio: Studio):
    big = png(4000, 4000)  # 16 megapixels each, the per-photo cap; five exceed 64 per request
    before = studio.rows()
    started = time.perf_counter()

    response = upload(studio, [big] * 5)

    assert time.perf_counter() - started < 1.0
    assert response.status_code == 400
    assert (
        "5 photos decode to 80 megapixels together, over the 64 megapixel limit"
        in (response.json["error"])
    )
    assert studio.rows() == before and not studio.stored()


def test_a_photo_over_the_per_photo_pixel_cap_is_named(studio: Studio):
    response = upload(studio, [png(5000, 4000)])

    assert response.status_code == 400
    assert "'p0.png': a 5000x4000 PNG is over the 16 megapixel limit" in response.json["error"]
    assert not studio.stored()
