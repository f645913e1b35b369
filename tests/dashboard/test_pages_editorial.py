"""The editorial loop's pages: the gallery's re-roll and pick forms, the story editor and the
revisions page, and the job page's word on the comic's picks."""

from __future__ import annotations

import html

import pytest
import yaml
from flask.testing import FlaskClient

from farm.comic.job import build_job_outputs
from farm.queue.app import FINALIZE_JOB, RENDER_SHARD
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@pytest.fixture
def job_id(studio: Studio) -> str:
    job = studio.call("POST", "/api/v1/jobs", json=story_body(make_character(studio))).json["id"]
    finish_renders(studio, job)
    return job


@pytest.fixture
def artist(studio: Studio) -> tuple[FlaskClient, str]:
    client = studio.client()
    return client, studio.log_in(client, "a-artist")


def test_the_gallery_picks_and_rerolls(studio: Studio, job_id: str, artist):
    client, csrf = artist
    page = client.get(f"/jobs/{job_id}/gallery").text
    assert 'id="scene-2"' in page and 'data-pick="2-1"' in page and 'data-scene="2"' in page
    assert "★ in the comic (first)" in page  # v0 of each scene, until someone picks

    picked = client.post(
        f"/jobs/{job_id}/pick", data={"scene": "2", "variant": "1", "csrf_token": csrf}
    )
    assert picked.status_code == 302 and picked.location.endswith("#scene-2")
    assert studio.tasks.sent[-1].name == FINALIZE_JOB
    page = client.get(f"/jobs/{job_id}/gallery").text
    assert "Scene 2: v1 picked; the comic is being built again." in page
    assert 'data-pick="2-1"' not in page and 'data-pick="2-0"' in page

    sent = len(studio.tasks.sent)
    rerolled = client.post(
        f"/jobs/{job_id}/reroll",
        data={"scenes": ["1", "2"], "variants": "2", "csrf_token": csrf},
    )
    assert rerolled.status_code == 302
    assert [t.name for t in studio.tasks.sent[sent:]] == [RENDER_SHARD, RENDER_SHARD]
    assert "4 new variant(s) queued" in client.get(f"/jobs/{job_id}").text


def test_bad_forms_are_400_pages_and_change_nothing(studio: Studio, job_id: str, artist):
    client, csrf = artist
    before = studio.rows()
    for path, form, message in [
        ("pick", {"scene": "2", "variant": "7"}, "there is no v7"),
        ("pick", {"scene": "x", "variant": "0"}, "scene: a whole number"),
        ("reroll", {"scenes": "9"}, "there is no scene 9"),
    ]:
        response = client.post(f"/jobs/{job_id}/{path}", data={**form, "csrf_token": csrf})
        assert response.status_code == 400 and message in response.text, response.text
    assert studio.rows() == before


def test_the_story_editor_makes_a_revision_and_the_history_shows_both(
    studio: Studio, job_id: str, artist
):
    client, csrf = artist
    editor = client.get(f"/jobs/{job_id}/story").text
    assert "Save as revision 2" in editor and "character" not in editor.split("<textarea")[1]
    story = yaml.safe_load(
        html.unescape(editor.split('data-field="story">')[1].split("</textarea>")[0])
    )
    story["scenes"][0]["prompt"] = "a man img at sea"

    bad = client.post(
        f"/jobs/{job_id}/story", data={"story": "scenes: [{prompt: a dog}]", "csrf_token": csrf}
    )
    assert bad.status_code == 400 and "trigger" in bad.text and "a dog" in bad.text

    saved = client.post(
        f"/jobs/{job_id}/story", data={"story": yaml.safe_dump(story), "csrf_token": csrf}
    )
    assert saved.status_code == 302
    job_page = client.get(f"/jobs/{job_id}").text
    assert (
        "Revision 2: scene 1: prompt changed. 2 render(s) kept, 0 reused, 1 to render." in job_page
    )
    assert "earlier revisions" in job_page
    history = client.get(f"/jobs/{job_id}/revisions?n=1").text
    assert 'data-revision="2"' in history and 'data-revision="1"' in history
    assert "data:image/webp;base64," in history  # revision 1's scene 1, now retired


def test_the_job_page_says_which_picks_the_comic_shows(studio: Studio, job_id: str, artist):
    client, csrf = artist
    with studio.farm.sessions() as session:
        build_job_outputs(session, studio.farm.storage, job_id)
    page = client.get(f"/jobs/{job_id}").text
    assert "The comic shows scene 1: v0, scene 2: v0." in page
    assert 'data-action="rebuild-comic"' not in page
    client.post(f"/jobs/{job_id}/pick", data={"scene": "2", "variant": "1", "csrf_token": csrf})
    page = client.get(f"/jobs/{job_id}").text
    assert "The picks changed since it was built." in page and 'data-action="rebuild-comic"' in page
    rebuilt = client.post(f"/jobs/{job_id}/outputs", data={"csrf_token": csrf})
    assert rebuilt.status_code == 302 and studio.tasks.sent[-1].kwargs == {"webhook": False}
