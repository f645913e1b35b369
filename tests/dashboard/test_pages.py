"""The HTML pages through Flask's test client: every page renders, forms go through the same
service functions as the API, user text is escaped wherever it is shown."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from sqlalchemy import select

from farm.comic.job import build_job_outputs
from farm.db.models import Render, Worker
from farm.db.states import WorkerStatus
from farm.job_names import file_stem
from tests.fixtures.dashboard import (
    Studio,
    finish_renders,
    make_character,
    photo_files,
    story_body,
)

XSS = "<script>alert('x')</script>"


@pytest.fixture
def artist(studio: Studio) -> tuple[FlaskClient, str]:
    """A logged-in artist's browser and the CSRF token of its session."""
    client = studio.client()
    return client, studio.log_in(client, "a-artist")


def submitted_job(studio: Studio, **overrides: Any) -> tuple[int, str]:
    character_id = make_character(studio)
    body = story_body(character_id, **overrides)
    return character_id, studio.call("POST", "/api/v1/jobs", json=body).json["id"]


def test_every_page_renders(studio: Studio, artist):
    client, _ = artist
    character_id, job_id = submitted_job(studio)
    finish_renders(studio, job_id)
    render_id = studio.call("GET", f"/api/v1/jobs/{job_id}/renders").json["items"][0]["id"]

    for url in (
        "/",
        "/jobs",
        "/jobs?status=succeeded&page=1",
        "/stories/new",
        f"/stories/new?character_id={character_id}",
        "/characters",
        "/characters/new",
        f"/characters/{character_id}",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/gallery",
        f"/jobs/{job_id}/comic",
        f"/renders/{render_id}",
        "/farm",
    ):
        response = client.get(url, follow_redirects=True)
        assert response.status_code == 200, url
        assert response.mimetype == "text/html", url
    assert client.get("/admin/").status_code == 403
    assert client.get("/no/such/page").status_code == 404


def test_prompts_and_captions_are_escaped_everywhere(studio: Studio, artist):
    client, _ = artist
    scenes = [{"prompt": f"a man img {XSS}", "caption": XSS}]
    _, job_id = submitted_job(studio, scenes=scenes)
    finish_renders(studio, job_id)
    render_id = studio.call("GET", f"/api/v1/jobs/{job_id}/renders").json["items"][0]["id"]

    for url in (f"/jobs/{job_id}", f"/jobs/{job_id}/gallery", f"/renders/{render_id}"):
        page = client.get(url).text
        assert XSS not in page, url
        assert "&lt;script&gt;alert(" in page, url


def test_the_story_form_submits_a_job(studio: Studio, artist):
    client, csrf = artist
    character_id = make_character(studio)
    form = {
        "csrf_token": csrf,
        "source": "form",
        "character_id": str(character_id),
        "preset": "tiny",
        "style": "Comic book",
        "aspect": "custom",
        "width": "64",
        "height": "64",
        "steps": "2",
        "guidance": "5",
        "style_strength": "20",
        "seed": "3",
        "variants": "1",
        "priority": "6",
        "scenes": "a man img reading | Chapter 1 | 2\n\na man img sleeping\n",
    }

    preview = client.post("/stories/preview", data=form, headers={"X-CSRF-Token": csrf})
    assert preview.json == {
        "renders": 3,
        "shards": 2,
        "width": 64,
        "height": 64,
        "preset": "tiny",
        "warnings": ["no worker serves preset tiny: it will wait"],  # no worker in this test
        "estimated_s": None,
        "estimated_device_s": None,  # nothing of the preset measured yet
    }
    response = client.post("/stories/new", data=form)

    assert response.status_code == 302
    job_id = response.location.rsplit("/", 1)[-1]
    job = studio.call("GET", f"/api/v1/jobs/{job_id}").json
    assert job["priority"] == 6 and job["renders_total"] == 3
    assert job["story"]["style"] == "Comic book"
    assert job["story"]["scenes"][0]["caption"] == "Chapter 1"
    assert job["story"]["scenes"][0]["variants"] == 2
    page = client.get(response.location).text
    assert "Submitted: 3 renders in 2 shards." in page


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scenes": "a man reading"}, "trigger"),
        ({"scenes": "a man img | a | 2 | extra"}, "line 1"),
        ({"scenes": "a man img | caption | many"}, "variants"),
        ({"steps": "lots"}, "steps"),
        ({"character_id": "nobody"}, "pick one of your characters"),
        ({"priority": "urgent"}, "priority"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
    ],
)
def test_a_bad_story_form_shows_why_and_writes_nothing(
    studio: Studio, artist, change: dict, message: str
):
    client, csrf = artist
    character_id = make_character(studio)
    form = {
        "csrf_token": csrf,
        "character_id": str(character_id),
        "preset": "tiny",
        "width": "64",
        "height": "64",
        "scenes": "a man img reading",
        **change,
    }
    before = studio.rows()

    response = client.post("/stories/new", data=form)

    assert response.status_code == 400
    assert message in response.text
    assert 'value="64"' in response.text  # the form keeps what was typed
    assert studio.rows() == before and not studio.tasks.sent
    preview = client.post("/stories/preview", data=form, headers={"X-CSRF-Token": csrf})
    assert preview.status_code == 400 and message in preview.json["error"]


def test_a_story_file_is_submitted_for_the_chosen_character(studio: Studio, artist):
    client, csrf = artist
    character_id = make_character(studio)
    story = {
        "character": {"name": "Someone", "class_word": "man", "photos": ["elsewhere.jpg"]},
        "preset": "tiny",
        "width": 64,
        "height": 64,
        "scenes": [{"prompt": "a man img at sea", "caption": "Voyage"}],
    }
    upload = (io.BytesIO(yaml.safe_dump(story).encode()), "story.yaml")

    response = client.post(
        "/stories/new",
        data={
            "csrf_token": csrf,
            "source": "file",
            "character_id": str(character_id),
            "story_file": upload,
        },
    )

    assert response.status_code == 302, response.text
    job = studio.call("GET", f"/api/v1/jobs/{response.location.rsplit('/', 1)[-1]}").json
    assert job["character_id"] == character_id and job["renders_total"] == 1
    assert job["story"]["character"]["name"] == "Newton"

    broken = client.post(
        "/stories/new",
        data={
            "csrf_token": csrf,
            "source": "file",
            "character_id": str(character_id),
            "story_file": (io.BytesIO(b"scenes: [unclosed"), "story.yaml"),
        },
    )
    assert broken.status_code == 400 and "story file: line 2, column 1: invalid YAML" in broken.text


def test_the_character_form_explains_each_rejected_photo(studio: Studio, artist):
    client, csrf = artist
    photos = [*photo_files("newton_1.jpg"), (io.BytesIO(b"GIF89a nope"), "cat.gif")]
    form = {"csrf_token": csrf, "name": "Newton", "class_word": "man", "photos": photos}

    rejected = client.post("/characters/new", data=form)

    assert rejected.status_code == 400
    assert "cat.gif" in rejected.text and "not a readable JPEG, PNG or WebP" in rejected.text
    assert "nothing was saved" in rejected.text and studio.stored() == []

    form["photos"] = photo_files("newton_1.jpg", "newton_3.jpg")
    made = client.post("/characters/new", data=form)
    assert made.status_code == 302
    page = client.get(made.location).text
    assert page.count('<rect class="face"') == 2


def test_a_dropped_photo_is_checked_at_once(studio: Studio, artist):
    client, csrf = artist
    good = client.post(
        "/characters/check-photo",
        data={"photo": photo_files("newton_1.jpg")},
        headers={"X-CSRF-Token": csrf},
    ).json
    assert good["ok"] and good["width"] == 280 and len(good["box"]) == 4
    bad = client.post(
        "/characters/check-photo",
        data={"photo": (io.BytesIO(b"text"), "x.jpg")},
        headers={"X-CSRF-Token": csrf},
    ).json
    assert not bad["ok"] and "not a readable" in bad["reason"]
    assert studio.stored() == []


def test_the_zip_holds_every_finished_png(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    finish_renders(studio, job_id, fail_scene=1)

    response = client.get(f"/jobs/{job_id}/download.zip")

    assert response.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    # Scene 1 (scenes are numbered from 1), and the manifest of the recipes, last.
    assert archive.namelist() == ["0001-v0.png", "manifest.json"]
    assert archive.read("0001-v0.png").startswith(b"\x89PNG")
    [entry] = json.loads(archive.read("manifest.json"))["renders"]
    assert entry["file"] == "0001-v0.png" and "negative_prompt" in entry


def test_the_job_page_and_the_comic_step_give_one_zip(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    finish_renders(studio, job_id)
    with studio.farm.sessions() as session:
        keys = build_job_outputs(session, studio.farm.storage, job_id)

    streamed = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job_id}/download.zip").get_data()))
    stored = zipfile.ZipFile(io.BytesIO(studio.farm.storage.get(keys["renders"])))
    names = ["0001-v0.png", "0002-v0.png", "0002-v1.png", "manifest.json"]
    assert streamed.namelist() == stored.namelist() == names
    for name in stored.namelist():
        assert streamed.read(name) == stored.read(name), name


def test_cancel_and_retry_from_the_job_page(studio: Studio, artist):
    client, csrf = artist
    _, job_id = submitted_job(studio)
    page = client.get(f"/jobs/{job_id}").text
    assert 'data-action="cancel"' in page and 'data-action="retry"' not in page
    assert f'data-events="/jobs/{job_id}/events"' in page

    client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    page = client.get(f"/jobs/{job_id}").text
    assert "Job cancelled." in page and 'data-action="retry"' in page
    # Nothing failed: the button restarts what was cancelled, it offers no failed shards.
    assert "Retry failed shards" not in page and "Restart cancelled shards" in page
    assert 'data-events=""' in page  # an ended job opens no stream

    client.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf})
    assert "2 shard(s) sent again." in client.get(f"/jobs/{job_id}").text


def test_the_comic_link_shows_once_a_comic_exists(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    finish_renders(studio, job_id)
    assert 'data-action="comic"' not in client.get(f"/jobs/{job_id}").text

    storage = studio.farm.storage
    storage.put(f"jobs/{job_id}/comic/page-001.png", b"\x89PNG page", "image/png")
    storage.put(f"jobs/{job_id}/comic/comic.pdf", b"%PDF-1.7", "application/pdf")

    assert 'data-action="comic"' in client.get(f"/jobs/{job_id}").text
    comic = client.get(f"/jobs/{job_id}/comic").text
    assert "Download comic.pdf" in comic
    pdf = client.get(f"/files/jobs/{job_id}/comic/0")
    assert pdf.data == b"%PDF-1.7" and "attachment" in pdf.headers["Content-Disposition"]
    assert client.get(f"/files/jobs/{job_id}/comic/1").mimetype == "image/png"
    assert client.get(f"/files/jobs/{job_id}/comic/2").status_code == 404
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["comic_url"].endswith("/comic")


def test_the_api_lists_a_jobs_outputs_with_download_urls(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    assert studio.call("GET", f"/api/v1/jobs/{job_id}/outputs").json == {"items": []}
    storage = studio.farm.storage
    storage.put(f"jobs/{job_id}/comic/comic.cbz", b"PK cbz", "application/vnd.comicbook+zip")
    storage.put(f"jobs/{job_id}/exports/renders.zip", b"PK zip", "application/zip")

    items = studio.call("GET", f"/api/v1/jobs/{job_id}/outputs").json["items"]
    named = file_stem(studio.call("GET", f"/api/v1/jobs/{job_id}").json["name"], job_id)
    assert [(i["name"], i["kind"]) for i in items] == [
        (f"{named}-comic.cbz", "cbz"),  # downloads carry the job's name
        (f"{named}-renders.zip", "zip"),
    ]
    zipped = client.get(items[1]["url"].removeprefix("http://localhost"))
    assert zipped.data == b"PK zip" and "attachment" in zipped.headers["Content-Disposition"]


def test_the_farm_page_and_api_show_workers_and_queues(studio: Studio, artist):
    client, _ = artist
    submitted_job(studio)
    with studio.farm.sessions.begin() as session:
        session.add(
            Worker(id="gpu-box:cuda0", hostname="gpu-box", device="cuda:0", presets=["tiny"])
        )
        session.add(
            Worker(
                id="old-box:cuda1",
                hostname="old-box",
                device="cuda:0",
                presets=["tiny"],
                status=WorkerStatus.LOST,
            )
        )

    page = client.get("/farm").text
    assert "gpu-box:cuda0" in page and "render.tiny" in page
    workers = studio.call("GET", "/api/v1/workers", "a-viewer").json["items"]
    assert [w["id"] for w in workers] == ["gpu-box:cuda0", "old-box:cuda1"]
    assert workers[0]["heartbeat_age_s"] < 60 and workers[0]["status"] == "starting"
    queues = {q["preset"]: q for q in studio.call("GET", "/api/v1/queues").json["items"]}
    assert queues["tiny"]["queued_shards"] == 2 and queues["tiny"]["running_shards"] == 0

    live = studio.call("DELETE", "/api/v1/workers/gpu-box:cuda0", "a-admin")
    assert live.status_code == 409
    assert studio.call("DELETE", "/api/v1/workers/old-box:cuda1", "a-admin").status_code == 204
    assert len(studio.call("GET", "/api/v1/workers").json["items"]) == 1


def test_an_admin_makes_and_revokes_tokens_on_the_admin_page(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client, "a-admin")

    made = client.post(
        "/admin/tokens", data={"csrf_token": csrf, "name": "pipeline", "role": "artist"}
    )

    assert made.status_code == 201
    assert "Copy its secret now" in made.text and "rf_" in made.text
    secret = made.text.split("<code>")[-1].split("</code>")[0]
    assert (
        studio.client()
        .get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
        .json["name"]
        == "pipeline"
    )
    bad = client.post("/admin/tokens", data={"csrf_token": csrf, "name": "x", "role": "god"})
    assert bad.status_code == 400 and "role &#39;god&#39; is unknown" in bad.text
    account = client.post(
        "/admin/accounts",
        data={
            "csrf_token": csrf,
            "username": "carol",
            "password": "long enough pass",
            "role": "viewer",
        },
    )
    assert account.status_code == 302 and "carol" in client.get("/admin/").text


def test_a_form_without_its_csrf_token_is_refused(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 400 and "security token" in response.text
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["status"] == "queued"


def test_the_job_page_marks_renders_made_again_for_identity_qc(studio: Studio, artist):
    client, _ = artist
    _, job_id = submitted_job(studio)
    finish_renders(studio, job_id)
    with studio.farm.sessions.begin() as session:
        render = session.scalars(select(Render).where(Render.job_id == job_id)).first()
        render.qc_retries, render.face_similarity = 2, 0.71
        render_id = render.id
    page = client.get(f"/jobs/{job_id}").text
    assert "1 render(s) were made again for identity QC" in page and "QC ×2" in page
    assert "0.710" in client.get(f"/renders/{render_id}").text
    assert studio.call("GET", f"/api/v1/renders/{render_id}").json["qc_retries"] == 2
