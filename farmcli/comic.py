"""`farm comic JOB`: build a job's comic pages, PDF, CBZ and renders zip on demand."""

from __future__ import annotations

from pathlib import Path

import click

from farm.comic.layout import LAYOUTS, CaptionPosition, Layout, PageStyle
from farm.comic.pages import MAX_DPI, MIN_DPI
from farmcli.errors import one_line_errors
from farmcli.job_refs import full_job_id
from farmcli.terminal import progress


@click.command()
@click.argument("job_id")
@click.option("--layout", type=click.Choice(LAYOUTS), default="four-panel", show_default=True)
@click.option(
    "--page", "page_spec", default="A4", show_default=True, help="A4, letter, or WxH in pixels."
)
@click.option(
    "--dpi",
    type=click.IntRange(MIN_DPI, MAX_DPI),
    default=300,
    show_default=True,
    help="Print resolution: sets the pixels of A4/letter, and the PDF's paper size.",
)
@click.option(
    "--captions", type=click.Choice(["below", "above"]), default="below", show_default=True
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the files into this folder.",
)
@one_line_errors
def comic(
    job_id: str,
    layout: Layout,
    page_spec: str,
    dpi: int,
    captions: CaptionPosition,
    out_dir: Path | None,
) -> None:
    """Build JOB_ID's comic (pages, PDF, CBZ) and renders zip into object storage."""
    from farm.comic.job import build_job_outputs, built_picks
    from farm.comic.pages import PageSize
    from farm.context import Farm
    from farm.storage.local import LocalStorage

    page = PageSize.parse(page_spec, dpi)
    farm = Farm()
    try:
        job_id = full_job_id(farm, job_id)
        with farm.sessions() as session:
            keys = build_job_outputs(
                session,
                farm.storage,
                job_id,
                layout=layout,
                page=page,
                style=PageStyle(captions=captions),
            )
        pages = sum(name.startswith("page-") for name in keys)
        click.echo(f"{pages} page(s) of {page.width}x{page.height} px, {layout}:")
        for key in keys.values():
            click.echo(f"  {key}")
        shown = built_picks(farm.storage, job_id) or []
        click.echo(
            "panels: "
            + "; ".join(f"scene {p['scene']} v{p['variant']} ({p['reason']})" for p in shown)
        )
        if out_dir is not None:
            out = LocalStorage(out_dir)
            names = {key: key.removeprefix(f"jobs/{job_id}/") for key in keys.values()}
            for key, name in progress(names.items(), total=len(names), desc="files", unit="file"):
                out.put(name, farm.storage.get(key))
            for stale in list(out.list("comic/page-")):
                if stale not in names.values():
                    out.delete(stale)
            click.echo(f"written under {out.root}")
    finally:
        farm.close()
