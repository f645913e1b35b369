"""Preview-first approval in a real headless Chromium, against the dashboard and a real worker
(the fixtures of tests/dashboard/test_browser.py, whose worker hosts tiny and tiny-fast): submit
a story with "Approve a preview first", see its contact sheet fill, approve scene 2, then the
rest, and download the renders under the job's name. Screenshots: artifacts/screenshots/
(approval-*)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.db.states import JobStatus
from farm.preview import preview_of
from tests.dashboard import test_browser as day
from tests.dashboard.test_browser import (
    RENDER_TIMEOUT_MS,
    Site,
    expect,
    log_in,
    make_character,
    shot,
    write_story,
)

# The browser day's fixtures: the dashboard with a real worker, Chromium, a page.
site, browser, page = day.site, day.browser, day.page

pytestmark = pytest.mark.slow


def reload_until(page, selector: str, what: str) -> None:
    """Reload the job page until `selector` is on it: a job awaiting approval streams nothing."""
    deadline = time.monotonic() + RENDER_TIMEOUT_MS / 1000
    while page.locator(selector).count() == 0:
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        page.wait_for_timeout(1000)
        page.reload()


def seeds_of(session: Session, job_id: str) -> dict[int, int]:
    rows = session.execute(select(Render.scene_index, Render.seed).where(Render.job_id == job_id))
    return {scene: seed for scene, seed in rows}


def test_approve_a_preview_scene_by_scene(page, site: Site, tmp_path: Path):
    log_in(page, site)
    make_character(page, tmp_path)
    write_story(page, ["a man img reading | Chapter 1 | 1", "a man img by a river | The river | 1"])
    page.fill("#title", "Newton ch1")
    page.check("#approval")
    shot(page, "approval-01-new-story")
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("h1")).to_contain_text("Newton ch1")
    expect(page.locator("[data-field=status]")).to_have_text("awaiting_approval")
    expect(page.locator("[data-field=approval] [data-scene]")).to_have_count(2)
    with site.farm.sessions() as session:  # nothing at full quality until approved
        assert not session.scalars(select(Render.id).where(Render.job_id == job_id)).all()

    # The worker renders the previews (tiny-fast); the sheet offers each scene to approve.
    reload_until(page, "[data-approve-scene='2']", "the previews")
    reload_until(page, "[data-approve-scene='1']", "the previews")
    images = page.locator("[data-field=approval] img")
    expect(images).to_have_count(2)
    assert images.evaluate_all("imgs => imgs.every((i) => i.complete && i.naturalWidth > 0)")
    shot(page, "approval-02-contact-sheet")

    # Scene 2 first: it renders at full quality with its preview's seed, scene 1 waits.
    page.check("[data-approve-scene='2']")
    page.click("[data-action=approve-selected]")
    expect(page.locator(".flash")).to_have_text(
        "Approved scene(s) 2: 1 render(s) queued at full quality."
    )
    expect(page.locator("[data-scene='2']")).to_have_attribute("data-state", "approved")
    reload_until(page, "[data-field=status]:has-text('awaiting_approval')", "scene 2")
    reload_until(page, "[data-field=thumbs] .thumb", "scene 2's full render")
    expect(page.locator("[data-field=thumbs] .thumb")).to_have_count(1)
    expect(page.locator("[data-field=thumbs] .thumb span")).to_have_text("2 · v0")
    shot(page, "approval-03-scene-2")

    # Then the rest; the job ends and its page shows both full renders.
    page.click("[data-action=approve-all]")
    expect(page.locator(".flash")).to_have_text(
        "Approved scene(s) 1: 1 render(s) queued at full quality."
    )
    reload_until(page, "[data-field=status]:has-text('succeeded')", "the job's end")
    expect(page.locator("[data-field=thumbs] .thumb")).to_have_count(2)
    expect(page.locator("[data-field=approval] [data-state=approved]")).to_have_count(2)
    shot(page, "approval-04-done")
    with site.farm.sessions() as session:
        preview = preview_of(session, job_id)
        assert seeds_of(session, job_id) == seeds_of(session, preview.id)  # the preview's
        assert session.get(Job, job_id).status is JobStatus.SUCCEEDED

    with page.expect_download() as download:
        page.click("[data-action=download]")
    assert download.value.suggested_filename == "newton-ch1.zip"
