"""`build_job_outputs` and `farm comic` end to end: SQL rows on SQLite, renders in a folder."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import farm.comic.job as comic_job
from farm.comic.job import build_job_outputs
from farm.comic.pages import PageSize
from farm.db.migrate import upgrade
from farm.db.models import Render
from farm.db.session import make_engine, session_factory
from farm.errors import InputError
from farm.jobs import render_key
from farm.storage import LocalStorage
from farmcli.main import main
from tests.db.rows import add_job

PAGE = PageSize.parse("A4", 36)
CAPTIONS = ["Ada wakes.", "She cycles to work.", None, "Zoë — «Привет»!", "Never rendered."]


def colour(scene: int, variant: int) -> tuple[int, int, int]:
    return (30 + 40 * scene, 200 - 90 * variant, 90)


def png(scene: int, variant: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour(scene, variant)).save(out, "PNG")
    return out.getvalue()


@dataclass
class ComicJob:
    data_dir: Path
    sessions: sessionmaker[Session]
    storage: LocalStorage
    job_id: str

    def build(self, **options: object) -> dict[str, str]:
        with self.sessions() as session:
            return build_job_outputs(session, self.storage, self.job_id, page=PAGE, **options)


@pytest.fixture
def comic(tmp_path: Path) -> Iterator[ComicJob]:
    """Five scenes: 0 and 3 done; 1 done twice; 2's variant 0 failed (its file from an earlier
    attempt is still in storage) and variant 1 done; 4 still queued."""
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'farm.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    storage = LocalStorage(data_dir / "storage")
    with sessions.begin() as session:
        job = add_job(session, renders=5, shard_size=2)
        job.spec = {
            "preset": "tiny",
            "seed": 7,
            "scenes": [{"prompt": f"scene {n}", "wide": n == 3} for n in range(5)],
        }
        first = {r.scene_index: r for r in session.scalars(select(Render))}
        for scene in (1, 2):
            extra = first[scene]
            session.add(
                Render(
                    job_id=job.id,
                    shard_id=extra.shard_id,
                    scene_index=scene,
                    variant=1,
                    seed=extra.seed + 1,
                    prompt=extra.prompt,
                    negative=extra.negative,
                )
            )
        session.flush()
        for r in session.scalars(select(Render)):
            r.caption = CAPTIONS[r.scene_index]
            if r.scene_index == 4:
                continue
            r.start("host:cuda0", "cuda:0")
            key = render_key(job.id, r.scene_index, r.variant)
            storage.put(key, png(r.scene_index, r.variant), "image/png")
            if (r.scene_index, r.variant) == (2, 0):
                r.fail("CUDA out of memory")
            else:
                r.finish(key)
        job_id = job.id
    yield ComicJob(data_dir, sessions, storage, job_id)
    engine.dispose()


def colours_on(image: Image.Image) -> set[tuple[int, int, int]]:
    return {c for _, c in image.convert("RGB").getcolors(image.width * image.height)}


def test_builds_pages_pdf_cbz_and_renders_zip_into_storage(comic):
    keys = comic.build()
    prefix = f"jobs/{comic.job_id}"
    assert keys == {
        "page-001": f"{prefix}/comic/page-001.png",
        "pdf": f"{prefix}/comic/comic.pdf",
        "cbz": f"{prefix}/comic/comic.cbz",
        "renders": f"{prefix}/exports/renders.zip",
    }
    with Image.open(io.BytesIO(comic.storage.get(keys["page-001"]))) as page:
        assert page.size == (PAGE.width, PAGE.height)
        shown = colours_on(page)
    # One panel per scene, the first finished variant; the queued scene is left out.
    assert {colour(0, 0), colour(1, 0), colour(2, 1), colour(3, 0)} <= shown
    assert not {colour(1, 1), colour(2, 0), colour(4, 0)} & shown

    pdf = PdfReader(io.BytesIO(comic.storage.get(keys["pdf"])))
    assert len(pdf.pages) == 1 and pdf.metadata.title == "Ada"
    with zipfile.ZipFile(io.BytesIO(comic.storage.get(keys["cbz"]))) as cbz:
        assert cbz.namelist() == ["001.jpg", "ComicInfo.xml"]
        assert b"<PageCount>1</PageCount>" in cbz.read("ComicInfo.xml")

    with zipfile.ZipFile(io.BytesIO(comic.storage.get(keys["renders"]))) as archive:
        files = ["0001-v0.png", "0002-v0.png", "0002-v1.png", "0003-v1.png", "0004-v0.png"]
        assert archive.namelist() == [*files, "manifest.json"]
        manifest = json.loads(archive.read("manifest.json"))
        assert archive.read("0003-v1.png") == png(2, 1)  # scene index 2 is scene 3
    assert manifest["job"] == comic.job_id
    assert [e["file"] for e in manifest["renders"]] == files
    assert [e["caption"] for e in manifest["renders"]] == [
        CAPTIONS[0],
        CAPTIONS[1],
        CAPTIONS[1],
        CAPTIONS[2],
        CAPTIONS[3],
    ]


def test_rebuilding_overwrites_the_same_keys_and_drops_stale_pages(comic):
    prefix = f"jobs/{comic.job_id}/comic/"
    keys = comic.build(layout="single")
    assert [k for k in keys if k.startswith("page-")] == [f"page-00{n}" for n in range(1, 5)]
    first = {k: comic.storage.get(k) for k in comic.storage.list(prefix + "page-")}
    assert comic.build(layout="single") == keys
    assert {k: comic.storage.get(k) for k in comic.storage.list(prefix + "page-")} == first

    keys = comic.build(layout="four-panel")
    assert list(comic.storage.list(prefix)) == [
        prefix + "comic.cbz",
        prefix + "comic.pdf",
        prefix + "page-001.png",
        prefix + "picks.json",
    ]
    assert len(PdfReader(io.BytesIO(comic.storage.get(keys["pdf"]))).pages) == 1


def test_rows_use_the_story_seed_and_its_wide_scenes(comic, monkeypatch):
    seen = {}

    def spy(panels, layout, page, *, style, seed):
        seen.update(wide=[p.wide for p in panels], layout=layout, seed=seed)
        return real(panels, layout, page, style=style, seed=seed)

    real = comic_job.build_pages
    monkeypatch.setattr(comic_job, "build_pages", spy)
    comic.build(layout="rows")
    assert seen == {"wide": [False, False, False, True], "layout": "rows", "seed": 7}


def test_unknown_jobs_and_jobs_with_nothing_finished_are_refused(comic):
    with comic.sessions() as session, pytest.raises(InputError, match="no job 'nope'"):
        build_job_outputs(session, comic.storage, "nope")
    with comic.sessions.begin() as session:
        empty = add_job(session, renders=2).id
    with comic.sessions() as session, pytest.raises(InputError, match="no finished renders"):
        build_job_outputs(session, comic.storage, empty)


def farm_env(data_dir: Path) -> dict[str, str]:
    return {
        "FARM_DATA_DIR": str(data_dir),
        "FARM_DATABASE_URL": f"sqlite:///{data_dir / 'farm.db'}",
        "FARM_STORAGE_URL": (data_dir / "storage").as_uri(),
    }


def test_farm_comic_builds_into_storage_and_the_out_folder(comic, tmp_path):
    out = tmp_path / "out"
    args = ["comic", comic.job_id, "--layout", "single", "--page", "200x280", "--dpi", "72"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)], env=farm_env(comic.data_dir))
    assert result.exit_code == 0, result.output
    assert "4 page(s) of 200x280 px, single" in result.output
    # The picks it shows: scene 3's first variant failed, its second stands in.
    picks = "panels: scene 1 v0 (first); scene 2 v0 (first); scene 3 v1 (first); scene 4 v0 (first)"
    assert picks in result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "comic/comic.cbz",
        "comic/comic.pdf",
        *(f"comic/page-00{n}.png" for n in range(1, 5)),
        "exports/renders.zip",
    ]
    assert (out / "comic/comic.pdf").read_bytes() == comic.storage.get(
        f"jobs/{comic.job_id}/comic/comic.pdf"
    )
    pdf = PdfReader(out / "comic/comic.pdf")
    assert float(pdf.pages[0].mediabox.width) == pytest.approx(200)  # 200 px at 72 dpi

    result = CliRunner().invoke(main, [*args[:2], "--out", str(out)], env=farm_env(comic.data_dir))
    assert result.exit_code == 0, result.output
    assert not (out / "comic/page-002.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["comic", "nope"], "error: no job 'nope'"),
        (["comic", "JOB", "--page", "A3"], "error: invalid page size 'A3'"),
    ],
)
def test_farm_comic_errors_are_one_line(comic, args, message):
    args = [comic.job_id if a == "JOB" else a for a in args]
    result = CliRunner().invoke(main, args, env=farm_env(comic.data_dir))
    assert result.exit_code == 2
    assert result.output.strip().startswith(message)
