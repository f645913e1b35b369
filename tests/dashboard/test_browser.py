"""A studio's day in a real headless Chromium, against the dashboard and a real worker.

The dashboard is served on 127.0.0.1 and a `farm worker --devices cpu --presets tiny` process
renders on the same embedded farm (SQLite, the SQL broker, a storage folder; Redis for live
events when it runs). The browser logs in, makes a character from dropped photos, submits a
story, watches the progress bar reach 100 %, opens a render, and cancels a second job.
Screenshots of every page go to artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `browser` fixture says so: a skip on a laptop, a failure under CI
    expect = sync_playwright = None
from dashboard.app import create_app
from farm.auth import create_token, ensure_project
from farm.characters import create_character
from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.models import Job, Role
from farm.db.queries import job_progress
from farm.db.states import JobStatus, RenderStatus
from farm.events import Events
from farm.identity.faces import DlibFaceAnalyzer
from farm.jobs import submit_story
from farm.lifecycle import cancel_job
from farm.serving import served_presets
from farm.settings import Settings
from farm.story import Story
from tests.fixtures.dashboard import NEWTON, SECRET_KEY, live_server
from tests.fixtures.services import skip_or_fail
from tests.fixtures.tiny import photos_of

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("FARM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REDIS_URL = "redis://127.0.0.1:6379/0"
RENDER_TIMEOUT_MS = 240_000  # a loaded 2-core CI machine starts the worker and renders in this


@dataclass(frozen=True)
class Site:
    url: str
    token: str
    farm: Farm


def _environment(root: Path, models_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(root),
        "FARM_MODELS_DIR": str(models_dir),
        "FARM_SHARD_SIZE": "2",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_STORAGE_URL", "FARM_EVENTS_URL"):
        env.pop(name, None)
    if _redis_answers():
        env["FARM_EVENTS_URL"] = REDIS_URL  # live progress through Redis pub/sub, as deployed
    return env


def _redis_answers() -> bool:
    try:
        Events(REDIS_URL)._redis().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Site]:
    """The dashboard and one CPU worker on one embedded farm, for the whole module."""
    root = tmp_path_factory.mktemp("browser-farm")
    env = _environment(root, models_dir)
    settings = Settings.from_env(env)
    upgrade(settings.database_url)
    farm = Farm(settings)
    with farm.sessions.begin() as session:
        _, token = create_token(session, ensure_project(session, "studio"), Role.ADMIN, "lead")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log = (SCREENSHOTS.parent / "browser-worker.log").open("wb")
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("farm")),
            "worker",
            "--devices",
            "cpu",
            "--presets",
            "tiny,tiny-fast",  # tiny-fast renders the previews of jobs awaiting approval
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    app = create_app({"SECRET_KEY": SECRET_KEY, "FARM": farm, "SSE_POLL_S": 0.5})
    try:
        with live_server(app) as url:
            yield Site(url, token, farm)
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown, passed on to the pool
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        farm.close()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[object]:
    if sync_playwright is None:
        skip_or_fail("the browser tests need Playwright: pip install playwright")
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site: Site) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site.url)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page, site: Site) -> None:
    page.goto("/jobs")
    assert page.url.endswith("/login?next=/jobs")
    shot(page, "01-login")
    page.fill("#token", site.token)
    page.click("[data-login=token]")
    page.wait_for_url("**/jobs")


def drop_file(page, selector: str, path: Path, mime: str) -> None:
    """A real drop event on the drop zone, with the file in its DataTransfer."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""",
        [data, path.name, mime],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def make_character(page, tmp_path: Path) -> None:
    page.click("text=Characters")
    page.click("text=Make the first one")
    page.fill("#name", "Newton")
    page.fill("#class_word", "man")
    drop_file(page, "[data-dropzone]", NEWTON / "newton_0.jpg", "image/jpeg")
    notes = tmp_path / "notes.jpg"
    notes.write_text("these are notes, not a photo")
    page.set_input_files("[data-photo-input]", [str(NEWTON / "newton_3.jpg"), str(notes)])
    expect(page.locator("[data-state=accepted]")).to_have_count(2)
    rejected = page.locator("[data-state=rejected]")
    expect(rejected).to_have_count(1)
    expect(rejected).to_contain_text("not a readable JPEG, PNG or WebP image")
    expect(page.locator("[data-photo-list] rect.face")).to_have_count(2)
    shot(page, "02-new-character")
    page.click("[data-action=create-character]")
    expect(page.locator(".photos rect.face")).to_have_count(2)
    expect(page.locator("h1")).to_have_text("Newton")
    shot(page, "03-character")


def wait_for_worker(site: Site) -> None:
    """Until the worker process has registered: the story form offers what live workers serve."""
    deadline = time.monotonic() + RENDER_TIMEOUT_MS / 1000
    while True:
        with site.farm.sessions() as session:
            if served_presets(session).get("tiny"):
                return
        assert time.monotonic() < deadline, "the worker never registered"
        time.sleep(0.5)


def write_story(page, scenes: list[str]) -> None:
    page.click("text=New story")
    page.select_option("#preset", "tiny")
    page.select_option("#aspect", "custom")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "2")
    page.fill("#scenes", "\n".join(scenes))
    renders = sum(int(line.split("|")[2]) if line.count("|") == 2 else 1 for line in scenes)
    expect(page.locator("[data-preview]")).to_contain_text(f"{renders} render(s)")


def test_log_in_make_a_character_submit_and_watch_it_render(page, site: Site, tmp_path: Path):
    log_in(page, site)
    make_character(page, tmp_path)
    wait_for_worker(site)  # the preview below says nothing of waiting: a worker serves tiny

    write_story(
        page,
        [
            "a man img reading in a library | Chapter <1> | 1",
            "a man img under an apple tree | The apple | 2",
        ],
    )
    expect(page.locator("[data-preview]")).to_have_text(
        "3 render(s) in 2 shard(s), 64 × 64, preset tiny"
    )
    page.click("[data-mode=table]")  # the same scenes as a table, and back
    captions = page.locator(".scene-table td.caption input")
    expect(captions).to_have_count(2)
    assert captions.evaluate_all("inputs => inputs.map((i) => i.value)") == [
        "Chapter <1>",
        "The apple",
    ]
    page.click("[data-mode=text]")
    shot(page, "04-new-story")
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    expect(page.locator(".flash")).to_have_text("Submitted: 3 renders in 2 shards.")
    shot(page, "05-job-submitted")

    # The bar fills as the worker renders; the page reloads once the job ends, and then
    # opens no stream any more.
    expect(page.locator("[data-field=percent]")).to_have_text("100%", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator("[data-job]")).to_have_attribute("data-events", "")
    expect(page.locator("[data-field=status]")).to_have_text("succeeded")
    expect(page.locator("[data-count=done]")).to_have_text(["3", "3"])
    expect(page.locator("[data-field=thumbs] .thumb")).to_have_count(3)
    bar = page.locator("[data-field=bar]")
    assert bar.evaluate("bar => [bar.value, bar.max]") == [1, 1]  # the fraction done
    expect(page.locator("[data-shard] [data-cell=status]")).to_have_text(["succeeded", "succeeded"])
    expect(page.locator("[data-action=download]")).to_be_visible()
    shot(page, "06-job-done")

    page.locator("[data-field=thumbs] .thumb").first.click()
    page.wait_for_url("**/renders/*")
    expect(page.locator("[data-field=prompt]")).to_contain_text("a man img reading in a library")
    expect(page.locator("[data-field=caption]")).to_have_text("Chapter <1>")  # escaped, shown
    image = page.locator("[data-field=image]")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 64
    shot(page, "07-render")

    page.go_back()
    page.click("text=Gallery")
    expect(page.locator(".gallery figure")).to_have_count(3)
    shot(page, "08-gallery")
    page.click("nav >> text=Farm")
    expect(page.locator("[data-worker]")).to_have_count(1)
    expect(page.locator("[data-worker]")).to_contain_text("cpu")
    shot(page, "09-farm")


def test_cancel_a_second_job(page, site: Site):
    log_in(page, site)
    write_story(page, [f"a man img in scene {n} | | 1" for n in range(12)])
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]

    page.click("[data-action=cancel]")
    expect(page.locator(".flash")).to_contain_text("ancel")
    expect(page.locator("[data-job]")).to_have_attribute(
        "data-events", "", timeout=RENDER_TIMEOUT_MS
    )
    expect(page.locator("[data-field=status]")).to_have_text("cancelled")
    expect(page.locator("[data-action=retry]")).to_be_visible()
    shot(page, "10-job-cancelled")

    with site.farm.sessions() as session:
        assert session.get(Job, job_id).status is JobStatus.CANCELLED
        counts = job_progress(session, job_id)
        assert counts[RenderStatus.CANCELLED] >= 8  # at most one shard of two had started
    page.goto("/jobs")
    expect(page.locator("[data-job-row]")).to_have_count(2)
    shot(page, "11-jobs")
    page.click("nav >> text=Admin")
    expect(page.locator("[data-token]")).to_have_count(1)
    shot(page, "12-admin")


def test_a_story_whose_scenes_share_attention(page, site: Site):
    """The form's consistency fields reach the job's story, and a worker renders it: the
    reference scenes first, then the others reading their tokens."""
    with site.farm.sessions.begin() as session:  # whether or not the first test ran
        create_character(
            session,
            site.farm.storage,
            DlibFaceAnalyzer(),
            name="Newton",
            class_word="man",
            trigger="img",
            photos=photos_of("newton_man", 2),
            project_id=ensure_project(session, "studio").id,
        )
    log_in(page, site)
    write_story(
        page, [f"a man img {place} | | 1" for place in ("at a desk", "in a garden", "asleep")]
    )
    page.select_option("#consistency_mode", "story")
    page.fill("#consistency_strength", "1.5")
    page.fill("#reference_scenes", "1, 3")
    shot(page, "13-new-story-consistency")
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]
    with site.farm.sessions() as session:
        consistency = session.get(Job, job_id).spec["consistency"]
    assert (consistency["mode"], consistency["strength"]) == ("story", 1.5)
    assert consistency["reference_scenes"] == [1, 3]
    expect(page.locator("[data-field=percent]")).to_have_text("100%", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator("[data-field=status]")).to_have_text("succeeded")
    expect(page.locator("[data-field=thumbs] .thumb")).to_have_count(3)
    shot(page, "14-job-consistency")


def test_pause_reorder_and_resume_a_job(page, site: Site):
    with site.farm.sessions.begin() as session:  # whether or not the first test ran
        create_character(
            session,
            site.farm.storage,
            DlibFaceAnalyzer(),
            name="Newton",
            class_word="man",
            trigger="img",
            photos=photos_of("newton_man", 2),
            project_id=ensure_project(session, "studio").id,
        )
    log_in(page, site)
    write_story(page, [f"a man img in room {n} | | 1" for n in range(12)])
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]

    page.click("[data-action=pause]")
    expect(page.locator(".flash")).to_contain_text("Job paused")
    expect(page.locator("[data-field=status]")).to_have_text("paused")
    expect(page.locator("[data-action=resume]")).to_be_visible()
    expect(page.locator("[data-action=pause]")).to_have_count(0)
    shot(page, "15-job-paused")
    page.select_option("[data-field=priority]", "8")
    page.click("[data-action=priority]")
    expect(page.locator(".flash")).to_contain_text("Priority set to 8")
    with site.farm.sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.priority) == (JobStatus.PAUSED, 8)

    page.click("[data-action=resume]")
    expect(page.locator(".flash")).to_contain_text("Job resumed")
    expect(page.locator("[data-action=pause]")).to_be_visible()
    page.click("[data-action=cancel]")  # the worker need not render the rest
    expect(page.locator("[data-field=status]")).to_have_text("cancelled", timeout=RENDER_TIMEOUT_MS)


def test_a_refused_live_stream_is_said_and_tried_again(page, site: Site):
    """A job page whose stream the dashboard refuses (429, as at its stream caps) says it is
    not live, and follows the job again once a stream is served. The job's preset is one no
    worker here serves, so it stays queued, and live, for as long as the test needs."""
    with site.farm.sessions.begin() as session:
        project_id = ensure_project(session, "studio").id
        character_id = create_character(
            session,
            site.farm.storage,
            DlibFaceAnalyzer(),
            name="Newton",
            class_word="man",
            trigger="img",
            photos=photos_of("newton_man", 2),
            project_id=project_id,
        ).id
    story = Story.model_validate(
        {
            "character": {"name": "Newton", "class_word": "man", "photos": ["newton.jpg"]},
            "preset": "photomaker-v2",
            "scenes": [{"prompt": "a man img waiting"}],
        }
    )
    job_id = submit_story(site.farm, story, character_id, project_id=project_id).job_id
    refused = page.locator("[data-field=stream-refused]")
    log_in(page, site)
    page.route("**/events", lambda route: route.fulfill(status=429, body="too many streams"))
    page.goto(f"/jobs/{job_id}")
    expect(refused).to_be_visible()
    shot(page, "16-stream-refused")
    page.unroute("**/events")
    expect(refused).to_be_hidden(timeout=20_000)  # asked again 5 s later, and served
    cancel_job(site.farm, job_id)


def test_the_default_form_on_a_farm_of_tiny_workers_renders(page, site: Site):
    """The new-story form as it opens, on a farm whose only worker serves tiny (and tiny-fast):
    its preset, size and steps are ones that worker renders, and the job completes."""
    log_in(page, site)
    wait_for_worker(site)
    page.click("text=New story")
    expect(page.locator("#preset")).to_have_value("tiny")
    expect(page.locator("#width")).to_have_value("64")
    expect(page.locator("#steps")).to_have_value("4")
    expect(page.locator("#preset option[value=photomaker-v2]")).to_have_text(
        "photomaker-v2 (no worker)"
    )
    expect(page.locator("[data-preset-note]")).to_be_hidden()
    page.select_option("#preset", "photomaker-v2")  # the note follows the choice, and back
    expect(page.locator("[data-preset-note]")).to_have_text(
        "no worker serves preset photomaker-v2: it will wait"
    )
    expect(page.locator("#width")).to_have_value("1024")
    page.select_option("#preset", "tiny")
    expect(page.locator("[data-preset-note]")).to_be_hidden()
    page.fill("#scenes", "a man img walking by the sea")
    expect(page.locator("[data-preview]")).to_contain_text("1 render(s) in 1 shard(s), 64 × 64")
    shot(page, "12-default-form")
    page.click("[data-action=submit-story]")
    page.wait_for_url("**/jobs/*")
    expect(page.locator("[data-field=percent]")).to_have_text("100%", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator("[data-field=status]")).to_have_text("succeeded")
    expect(page.locator("[data-field=waiting]")).to_be_hidden()
    shot(page, "13-default-form-job-done")
