"""PDF, CBZ and the renders zip, each read back with an independent reader."""

from __future__ import annotations

import io
import json
import zipfile
from xml.etree import ElementTree

import pytest
from PIL import Image
from pypdf import PdfReader

from farm.comic.exports import RenderFile, cbz_bytes, page_names, pdf_bytes, renders_zip
from farm.comic.pages import PageSize

A4_POINTS = (595.28, 841.89)


def pages(count: int, size: tuple[int, int] = (120, 170)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * n % 256, 90, 160)) for n in range(count)]


def test_pdf_has_a_page_per_image_at_the_paper_size_of_the_dpi():
    a4 = PageSize.parse("A4", 40)
    data = pdf_bytes(pages(3, (a4.width, a4.height)), a4.dpi, title="Ada’s day")
    assert data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 3
    for page in reader.pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        # The pixels were rounded at 40 dpi: within a pixel (1.8 pt) of A4.
        assert width == pytest.approx(A4_POINTS[0], abs=1.8)
        assert height == pytest.approx(A4_POINTS[1], abs=1.8)
    assert reader.metadata.title == "Ada’s day"


def test_pdf_needs_a_page():
    with pytest.raises(ValueError, match="at least one page"):
        pdf_bytes([], 300)


def test_page_names_sort_in_reading_order():
    assert page_names(3, "png") == ["001.png", "002.png", "003.png"]
    names = page_names(1200, "jpg")
    assert names[0] == "0001.jpg" and names == sorted(names)


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_cbz_holds_ordered_pages_and_comic_info(image_format):
    images = pages(12)
    data = cbz_bytes(images, title="Ada & the <stars>", notes="job j1", image_format=image_format)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        extension = "jpg" if image_format == "jpeg" else "png"
        assert names == [f"{n:03d}.{extension}" for n in range(1, 13)] + ["ComicInfo.xml"]
        for name, original in zip(names, images, strict=False):
            with Image.open(archive.open(name)) as page:
                assert page.size == original.size
                assert page.format == image_format.upper()
        info = ElementTree.fromstring(archive.read("ComicInfo.xml"))
    assert info.tag == "ComicInfo"
    assert info.findtext("Title") == "Ada & the <stars>"
    assert info.findtext("Notes") == "job j1"
    assert info.findtext("PageCount") == "12"
    listed = info.findall("Pages/Page")
    assert [p.get("Image") for p in listed] == [str(n) for n in range(12)]
    assert listed[0].get("ImageWidth") == "120" and listed[0].get("ImageHeight") == "170"


def test_archives_are_the_same_bytes_every_time():
    assert cbz_bytes(pages(2), title="t") == cbz_bytes(pages(2), title="t")


def render(scene: int, variant: int, caption: str | None) -> RenderFile:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (scene * 40, variant * 80, 0)).save(out, "PNG")
    return RenderFile(
        scene,
        variant,
        1000 + scene,
        f"a woman img, scene {scene}",
        "blurry",
        caption,
        out.getvalue(),
    )


def test_renders_zip_holds_each_render_and_a_manifest_of_their_recipes():
    files = [
        render(0, 0, "Zoë wakes — «утро»"),
        render(0, 1, "Zoë wakes — «утро»"),
        render(3, 0, None),
    ]
    data = renders_zip(iter(files), job_id="j1", title="Ada")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        # Scenes are numbered from 1 in file names, as people number them.
        assert archive.namelist() == ["0001-v0.png", "0001-v1.png", "0004-v0.png", "manifest.json"]
        manifest = json.loads(archive.read("manifest.json"))
        for entry, original in zip(manifest["renders"], files, strict=True):
            assert archive.read(entry["file"]) == original.data
    assert manifest["job"] == "j1" and manifest["title"] == "Ada"
    assert manifest["renders"][0] == {
        "scene": 0,
        "variant": 0,
        "seed": 1000,
        "prompt": "a woman img, scene 0",
        "negative_prompt": "blurry",
        "caption": "Zoë wakes — «утро»",
        "file": "0001-v0.png",
    }
    assert manifest["renders"][2]["caption"] is None
