"""The files a finished comic is downloaded as: a multi-page PDF, a CBZ for comic readers, and a
zip of the full-size renders with a manifest.

Each is built in memory as bytes, because object storage takes whole objects. Zip entries carry
a fixed timestamp, so the same pages give the same archive byte for byte.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Literal
from xml.etree import ElementTree

from PIL import Image

from farm.recipe import render_filename

# Pages are photographs with lettering: 4:4:4 chroma at high quality keeps the captions crisp
# at a tenth of a PNG's size.
JPEG_OPTIONS = {"quality": 92, "subsampling": 0}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ImageFormat = Literal["jpeg", "png"]
_EXTENSIONS: dict[ImageFormat, str] = {"jpeg": "jpg", "png": "png"}


def pdf_bytes(pages: Sequence[Image.Image], dpi: int, *, title: str = "") -> bytes:
    """One PDF page per image, each printing at `dpi` (an A4 page at 300 dpi prints on A4)."""
    if not pages:
        raise ValueError("a PDF needs at least one page")
    out = io.BytesIO()
    pages[0].save(
        out,
        "PDF",
        save_all=True,
        append_images=list(pages[1:]),
        resolution=float(dpi),
        title=title,
        producer="render-farm",
        **JPEG_OPTIONS,
    )
    return out.getvalue()


def page_names(count: int, extension: str) -> list[str]:
    """`001.png`, `002.png`, ...: zero-padded so that every reader sorts them in order."""
    digits = max(3, len(str(count)))
    return [f"{n:0{digits}d}.{extension}" for n in range(1, count + 1)]


def encode_page(page: Image.Image, image_format: ImageFormat) -> bytes:
    out = io.BytesIO()
    if image_format == "jpeg":
        page.save(out, "JPEG", **JPEG_OPTIONS)
    else:
        page.save(out, "PNG")
    return out.getvalue()


def cbz_bytes(
    pages: Sequence[Image.Image],
    *,
    title: str,
    notes: str = "",
    image_format: ImageFormat = "jpeg",
) -> bytes:
    """A comic book zip: the pages in order, then the ComicInfo.xml that readers show."""
    names = page_names(len(pages), _EXTENSIONS[image_format])
    info = ElementTree.Element("ComicInfo")
    ElementTree.SubElement(info, "Title").text = title
    if notes:
        ElementTree.SubElement(info, "Notes").text = notes
    ElementTree.SubElement(info, "PageCount").text = str(len(pages))
    listing = ElementTree.SubElement(info, "Pages")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index, (name, page) in enumerate(zip(names, pages, strict=True)):
            data = encode_page(page, image_format)
            _write(archive, name, data, zipfile.ZIP_STORED)
            ElementTree.SubElement(
                listing,
                "Page",
                Image=str(index),
                ImageWidth=str(page.width),
                ImageHeight=str(page.height),
                ImageSize=str(len(data)),
            )
        ElementTree.indent(info)
        xml = ElementTree.tostring(info, encoding="utf-8", xml_declaration=True)
        _write(archive, "ComicInfo.xml", xml, zipfile.ZIP_DEFLATED)
    return out.getvalue()


@dataclass(frozen=True)
class RenderFile:
    """One full-size render and the recipe that made it."""

    scene: int
    variant: int
    seed: int
    prompt: str
    negative: str
    caption: str | None
    data: bytes

    @property
    def name(self) -> str:
        # The same name as in object storage and in `farm fetch`'s folder.
        return render_filename(self.scene, self.variant)


def renders_zip(renders: Iterable[RenderFile], *, job_id: str, title: str = "") -> bytes:
    """The renders as they were made, and `manifest.json` naming each with its recipe.

    `renders` is consumed one at a time, so a caller can fetch each from storage as it goes.
    """
    out = io.BytesIO()
    for _ in stream_renders_zip(out, renders, job_id=job_id, title=title):
        pass
    return out.getvalue()


def stream_renders_zip(
    sink: IO[bytes], renders: Iterable[RenderFile], *, job_id: str, title: str = ""
) -> Iterator[None]:
    """`renders_zip` written into `sink`, yielding after each member: the job page streams
    the very archive the finalize step stores (one zip for a job, wherever it is taken from).
    A sink that cannot seek gets data descriptors after each member instead of patched
    headers, which is what lets the archive go out while it is written."""
    entries = []
    with zipfile.ZipFile(sink, "w") as archive:
        for render in renders:
            _write(archive, render.name, render.data, zipfile.ZIP_STORED)
            entries.append(
                {
                    "scene": render.scene,
                    "variant": render.variant,
                    "seed": render.seed,
                    "prompt": render.prompt,
                    # The key `farm render`'s manifest uses: one manifest format.
                    "negative_prompt": render.negative,
                    "caption": render.caption,
                    "file": render.name,
                }
            )
            yield
        manifest = {"job": job_id, "title": title, "renders": entries}
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        _write(archive, "manifest.json", text.encode(), zipfile.ZIP_DEFLATED)
    yield


def _write(archive: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)
