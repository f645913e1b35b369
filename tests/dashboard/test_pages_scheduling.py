"""The job page's hands on a waiting job (pause, resume, priority) and its device time, as a
person in the browser's place uses them: forms with their CSRF token."""

from __future__ import annotations

import pytest

from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@pytest.fixture
def job_id(studio: Studio) -> str:
    body = story_body(make_character(studio))
    return studio.call("POST", "/api/v1/jobs", json=body).json["id"]


def status_of(studio: Studio, job_id: str) -> tuple[str, int]:
    job = studio.call("GET", f"/api/v1/jobs/{job_id}", "a-viewer").json
    return job["status"], job["priority"]


def test_pause_priority_and_resume_from_the_job_page(studio: Studio, job_id: str):
    client = studio.client()
    csrf = studio.log_in(client, "a-artist")
    page = client.get(f"/jobs/{job_id}").text
    assert 'data-action="pause"' in page and 'data-action="resume"' not in page

    paused = client.post(f"/jobs/{job_id}/pause", data={"csrf_token": csrf})
    assert paused.status_code == 302 and status_of(studio, job_id) == ("paused", 5)
    page = client.get(f"/jobs/{job_id}").text
    assert "Job paused" in page and 'data-action="resume"' in page

    client.post(f"/jobs/{job_id}/priority", data={"csrf_token": csrf, "priority": "8"})
    assert status_of(studio, job_id) == ("paused", 8)
    bad = client.post(f"/jobs/{job_id}/priority", data={"csrf_token": csrf, "priority": "12"})
    assert bad.status_code == 400 and "priority must be a whole number from 0 to 9" in bad.text
    word = client.post(f"/jobs/{job_id}/priority", data={"csrf_token": csrf, "priority": "high"})
    assert word.status_code == 400 and status_of(studio, job_id) == ("paused", 8)

    client.post(f"/jobs/{job_id}/resume", data={"csrf_token": csrf})
    assert status_of(studio, job_id) == ("queued", 8)


def test_a_viewer_and_another_team_cannot_pause(studio: Studio, job_id: str):
    viewer = studio.client()
    csrf = studio.log_in(viewer, "a-viewer")
    assert 'data-action="pause"' not in viewer.get(f"/jobs/{job_id}").text
    assert viewer.post(f"/jobs/{job_id}/pause", data={"csrf_token": csrf}).status_code == 403

    other = studio.client()
    csrf = studio.log_in(other, "b-artist")
    assert other.post(f"/jobs/{job_id}/pause", data={"csrf_token": csrf}).status_code == 404
    assert status_of(studio, job_id) == ("queued", 5)


def test_the_job_page_shows_its_device_time(studio: Studio, job_id: str):
    finish_renders(studio, job_id)  # three renders of 0.7 device seconds each
    client = studio.client()
    studio.log_in(client, "a-viewer")

    page = client.get(f"/jobs/{job_id}").text

    assert '<dd data-field="device-s">2.10 s</dd>' in page
