"""The `farm` command line. Errors from outside input end the command with one line on stderr
and exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from farm.errors import FarmError
from farm.settings import Settings


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FarmError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what the farm does.")
def main(verbose: bool) -> None:
    """Render farm for identity-consistent story illustration (PhotoMaker on SDXL)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("story_file", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the PNGs and manifest.json.",
)
@click.option("--preset", default=None, help="Override the story's preset.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 64),
    default=None,
    help="Renders per UNet call (default: the preset's).",
)
@click.option("--device", default=None, help="torch device, e.g. cuda:0 or cpu (default: auto).")
@one_line_errors
def render(
    story_file: Path, out_dir: Path, preset: str | None, batch_size: int | None, device: str | None
) -> None:
    """Render every scene of STORY_FILE on this machine, with no servers."""
    from tqdm import tqdm

    from farm.render.loading import load_preset
    from farm.render.presets import PRESETS, get_preset
    from farm.render.story_render import render_story
    from farm.story import load_story

    settings = Settings.from_env()
    story = load_story(story_file, presets=PRESETS)
    if preset is not None:
        story = story.model_copy(update={"preset": get_preset(preset).name})
    loaded = load_preset(
        get_preset(story.preset),
        settings.models_dir,
        device=device or settings.device,
        sdxl_base=settings.sdxl_base,
    )
    total = len(story.plan())
    with tqdm(total=total, unit="render", desc=f"{story.character.name} [{story.preset}]") as bar:
        manifest = render_story(
            story, out_dir, loaded, batch_size=batch_size, on_render=lambda *_: bar.update()
        )
    click.echo(f"{total} renders in {out_dir.resolve()} (manifest: {manifest.resolve()})")


@main.group()
def models() -> None:
    """Model presets and their weights."""


@models.command("list")
def models_list() -> None:
    """Show each preset and whether its weights are on this machine."""
    from farm.errors import ModelNotFoundError
    from farm.render.presets import PRESETS, locate

    settings = Settings.from_env()
    for preset in PRESETS.values():
        try:
            files = locate(preset, settings.models_dir, settings.sdxl_base)
            where = f"ready ({files.checkpoint.parent})"
        except ModelNotFoundError as missing:
            where = f"missing: {missing}"
        click.echo(f"{preset.name:15} v{preset.version}  {where}")


@models.command("pull")
@click.argument("preset_name")
@one_line_errors
def models_pull(preset_name: str) -> None:
    """Download PRESET_NAME's weights into FARM_MODELS_DIR (needs internet)."""
    from farm.render.presets import get_preset, pull

    settings = Settings.from_env()
    files = pull(get_preset(preset_name), settings.models_dir, settings.sdxl_base)
    click.echo(f"{preset_name}: SDXL in {files.sdxl_dir}, PhotoMaker in {files.checkpoint}")
