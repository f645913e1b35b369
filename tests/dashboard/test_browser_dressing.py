"""Outfits, locations, a shot and a control image typed into the story form's scene lines, in a
real headless Chromium against the dashboard (the fixtures of tests/dashboard/test_browser.py):
the settings survive the table editor, and the job page lists each scene's. The job is
cancelled once seen; its rendering is the worker tests' business. Screenshots:
artifacts/screenshots/ (dressing-*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.auth import ensure_project
from farm.characters import create_character
from farm.identity.faces import DlibFaceAnalyzer
from tests.dashboard import test_browser as day
from tests.dashboard.test_browser import Site, expect, log_in, shot
from tests.dashboard.test_story_dressing import png
from tests.fixtures.tiny import photos_of

# The browser day's fixtures: the dashboard with a real worker, Chromium, a page.
site, browser, page = day.site, day.browser, day.page

pytestmark = pytest.mark.slow

FIRST = (
    "a man img reading | Chapter 1 | outfit: coat | location: library | shot: wide"
    " | control: pose.png openpose 0.8"
)


def test_scene_lines_with_outfits_locations_a_shot_and_a_control_image(
    page, site: Site, tmp_path: Path
):
    with site.farm.sessions.begin() as session:
        create_character(
            session,
            site.farm.storage,
            DlibFaceAnalyzer(),
            name="Newton",
            class_word="man",
            trigger="img",
            photos=photos_of("newton_man", 1),
            project_id=ensure_project(session, "studio").id,
        )
    pose = tmp_path / "pose.png"
    pose.write_bytes(png())
    log_in(page, site)
    page.click("text=New story")
    page.select_option("#preset", "tiny")
    page.select_option("#aspect", "custom")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "2")
    page.fill("#outfits", "coat: wearing a long red wool coat\nrobe: wearing a blue silk robe")
    page.fill("#locations", "library: in a dim Victorian library")
    page.fill("#scenes", f"{FIRST}\na man img asleep | outfit: robe")
    page.set_input_files("#scene_control_images", str(pose))
    expect(page.locator("[data-preview]")).to_contain_text("2 render(s)")

    # The table shows a line's settings in a column of their own, and writes them back.
    page.click("[data-mode=table]")
    settings = page.locator(".scene-table td.settings input")
    expect(settings.first).to_have_value(
        "outfit: coat | location: library | shot: wide | control: pose.png openpose 0.8"
    )
    page.locator(".scene-table td.caption input").nth(1).fill("Night")
    page.click("[data-mode=text]")
    expect(page.locator("#scenes")).to_have_value(
        f"{FIRST}\na man img asleep | Night | outfit: robe"
    )
    shot(page, "dressing-01-new-story")

    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    expect(page.locator(".flash")).to_have_text("Submitted: 2 renders in 1 shards.")
    dressing = page.locator("[data-field=scene-dressing] tr[data-scene] td:last-child")
    expect(dressing).to_have_text(
        ["outfit coat · location library · wide shot · openpose control × 0.8", "outfit robe"]
    )
    shot(page, "dressing-02-job")
    page.click("[data-action=cancel]")  # seen; the worker need not render it
    expect(page.locator(".flash")).to_contain_text("ancel")
