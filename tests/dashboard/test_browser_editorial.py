"""The editorial loop in a real headless Chromium, against the dashboard and a real worker (the
fixtures of tests/dashboard/test_browser.py): review a finished job, re-roll a scene from the
gallery, pick the new variant with the keyboard, and download the comic built from the pick.
Screenshots go to artifacts/screenshots/ (editorial-*)."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

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


def wait_for_the_job_to_end(page) -> None:
    expect(page.locator("[data-field=percent]")).to_have_text("100%", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator("[data-job]")).to_have_attribute("data-events", "")
    expect(page.locator("[data-field=status]")).to_have_text("succeeded")


def test_review_reroll_pick_and_download_the_comic(page, site: Site, tmp_path: Path):
    log_in(page, site)
    make_character(page, tmp_path)
    write_story(page, ["a man img reading | Chapter 1 | 1", "a man img by a river | The river | 1"])
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    job_url = page.url
    wait_for_the_job_to_end(page)
    expect(page.locator("[data-field=editorial]")).to_contain_text("Revision 1")

    # Review: each scene's variants, the comic's pick marked; re-roll scene 2.
    page.click("[data-field=editorial] >> text=Re-roll and pick in the gallery")
    expect(page.locator("section[data-scene]")).to_have_count(2)
    expect(page.locator("[data-field=picked]")).to_have_count(2)
    shot(page, "editorial-01-gallery")
    page.click("[data-action=reroll][data-scene='2']")
    expect(page.locator(".flash")).to_have_text("Re-rolling scene(s) 2: 1 new variant(s) queued.")
    page.goto(job_url)
    wait_for_the_job_to_end(page)
    expect(page.locator("[data-count=done]").first).to_have_text("3")

    # Pick the new variant from the keyboard: focus it, press P.
    page.click("[data-field=editorial] >> text=Re-roll and pick in the gallery")
    scene = page.locator("#scene-2")
    expect(scene.locator("figure[data-render]")).to_have_count(2)
    scene.locator("figure[data-variant='0']").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("p")
    expect(page.locator(".flash")).to_have_text(
        "Scene 2: v1 picked; the comic is being built again."
    )
    expect(page.locator("#scene-2 figure.picked")).to_have_attribute("data-variant", "1")
    shot(page, "editorial-02-picked")

    # The worker builds the comic again from the pick; the job page says which picks it shows.
    deadline = time.monotonic() + RENDER_TIMEOUT_MS / 1000
    page.goto(job_url)
    while "scene 2: v1 (picked)" not in (page.locator("[data-field=editorial]").text_content()):
        assert time.monotonic() < deadline, "the comic was not built again from the pick"
        page.wait_for_timeout(1000)
        page.reload()
    shot(page, "editorial-03-job")
    page.click("[data-action=comic]")
    with page.expect_download() as download:
        page.click("text=/Download .*cbz/")
    data = Path(download.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as cbz:
        info = cbz.read("ComicInfo.xml").decode()
    assert "scene 1: v0 (first); scene 2: v1 (picked)" in info
