"""The `farm` command group and the commands of one story's life: render here, or submit,
follow, cancel, retry and fetch it on a farm; models, the database, workers and `farm up`.
The sub-command modules' commands are added to the group at the end."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from farm.logs import configure_logging
from farm.settings import Settings
from farmcli.admin import drain, gc, queues, requeue, resume, workers
from farmcli.comic import comic
from farmcli.editorial import pick, reroll, revise
from farmcli.errors import one_line_errors
from farmcli.evaluation import evaluate_command
from farmcli.job_refs import full_job_id
from farmcli.jobs import (
    broker_said_once,
    jobs,
    project_id_of,
    project_option,
    status,
    unsent_note,
)
from farmcli.scheduling import pause, priority, projects, unpause, usage
from farmcli.terminal import on_terminal, progress, quiet_library_bars
from farmcli.tokens import tokens

if TYPE_CHECKING:
    from farm.context import Farm


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what the farm does.")
@one_line_errors
def main(verbose: bool) -> None:
    """Render farm for identity-consistent story illustration (PhotoMaker on SDXL)."""
    configure_logging(logging.INFO if verbose else logging.WARNING, Settings.from_env().log_format)


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
@click.option(
    "--fresh",
    is_flag=True,
    help="Render every scene, even those OUT holds already from an earlier run.",
)
@one_line_errors
def render(
    story_file: Path,
    out_dir: Path,
    preset: str | None,
    batch_size: int | None,
    device: str | None,
    fresh: bool,
) -> None:
    """Render every scene of STORY_FILE on this machine, with no servers. Into a folder it
    rendered before, only the changed scenes render, and files of scenes gone are removed."""
    from tqdm import tqdm

    quiet_library_bars()  # before the model libraries are imported
    from farm.render.folder_reuse import FolderReuse, story_hasher
    from farm.render.loading import load_preset
    from farm.render.presets import PRESETS, get_preset
    from farm.render.story_render import render_story
    from farm.story import load_story

    settings = Settings.from_env()
    story = load_story(story_file, presets=PRESETS, limits=settings.document_limits)
    if preset is not None:
        story = story.model_copy(update={"preset": get_preset(preset).name})
    loaded = load_preset(
        get_preset(story.preset),
        settings.models_dir,
        device=device or settings.device,
        sdxl_base=settings.sdxl_base,
        vram_mode=settings.vram_mode,
        compile_unet=settings.compile_unet,
        prompt_truncation=settings.prompt_truncation,
        noise=settings.noise,
    )
    reuse = None if fresh else FolderReuse(out_dir, story_hasher(story, settings))
    plan = story.plan()
    total = len(plan) if reuse is None else len(reuse.split(plan)[0])
    bar_label = f"{story.character.name} [{story.preset}]"
    with tqdm(total=total, unit="render", desc=bar_label, disable=not on_terminal()) as bar:
        manifest = render_story(
            story,
            out_dir,
            loaded,
            batch_size=batch_size,
            on_render=lambda *_: bar.update(),
            reuse=reuse,
        )
    kept = "" if reuse is None else f", {len(plan) - total} kept from the last run"
    removed = f", {len(reuse.removed)} removed" if reuse and reuse.removed else ""
    click.echo(
        f"{total} rendered{kept}{removed} in {out_dir.resolve()} (manifest: {manifest.resolve()})"
    )


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
        click.echo(f"{preset.name:24} v{preset.version}  {where}")
    from farm.control_spec import ControlType
    from farm.render.control_models import locate_control

    for kind in ControlType:  # the real presets' (the tiny ones build theirs)
        try:
            where = f"ready ({locate_control(settings.models_dir, kind)})"
        except ModelNotFoundError as missing:
            where = f"missing: {missing}"
        click.echo(f"{'control ' + kind.value:28}  {where}")


@models.command("pull")
@click.argument("preset_name")
@one_line_errors
def models_pull(preset_name: str) -> None:
    """Download PRESET_NAME's weights into FARM_MODELS_DIR (needs internet)."""
    from farm.render.presets import get_preset, pull

    quiet_library_bars()  # the hub's download bars: on a terminal only
    settings = Settings.from_env()
    files = pull(get_preset(preset_name), settings.models_dir, settings.sdxl_base)
    click.echo(f"{preset_name}: SDXL in {files.sdxl_dir}, PhotoMaker in {files.checkpoint}")


def _farm() -> Farm:
    """The services, built from the environment (imported late: `farm --help` stays fast)."""
    from farm.context import Farm

    return Farm(Settings.from_env())


@main.group()
def db() -> None:
    """The farm's SQL database."""


@db.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply the migrations (the only way the schema is made)."""
    from farm.db.migrate import current, upgrade

    url = Settings.from_env().database_url
    upgrade(url)
    click.echo(f"database at revision {current(url)}")


@main.command()
@click.argument("story_file", type=click.Path(path_type=Path))
@click.option(
    "--priority", type=click.IntRange(0, 9), default=5, show_default=True, help="9 is served first."
)
@click.option("--preset", default=None, help="Override the story's preset.")
@project_option
@one_line_errors
def submit(story_file: Path, priority: int, preset: str | None, project: str | None) -> None:
    """Plan STORY_FILE into shards and queue them in the project (the default one unless
    --project or FARM_PROJECT names another); prints the job id."""
    from farm.controls import files_beside, submitted_story
    from farm.identity.faces import open_face_analyzer
    from farm.jobs import submit_with_photos
    from farm.render.presets import PRESETS, get_preset
    from farm.render.story_render import character_photos
    from farm.story import load_story

    farm = _farm()
    story = load_story(story_file, presets=PRESETS, limits=farm.settings.document_limits)
    if preset is not None:
        story = story.model_copy(update={"preset": get_preset(preset).name})
    project_id = None
    if project is not None:
        with farm.sessions() as session:
            project_id = project_id_of(session, project)
    # Control images beside the story file, judged and stored by content before the job.
    story = submitted_story(farm.storage, story, files_beside(story))
    faces = open_face_analyzer("dlib", farm.settings.models_dir)
    cast_photos = {p.trigger: character_photos(story, p) for p in story.cast}
    with broker_said_once():
        submitted = submit_with_photos(
            farm,
            story,
            character_photos(story),
            faces,
            priority=priority,
            cast_photos=cast_photos,
            project_id=project_id,
        )
    click.echo(submitted.job_id)
    note = unsent_note(farm, submitted.job_id)
    if note is not None:
        click.echo(note, err=True)


@main.command()
@click.argument("job_id")
@one_line_errors
def cancel(job_id: str) -> None:
    """Cancel JOB_ID: queued shards are skipped, running ones stop at their next render."""
    from farm.lifecycle import cancel_job

    farm = _farm()
    job = cancel_job(farm, full_job_id(farm, job_id))
    click.echo(f"job {job.id} {job.status}")


@main.command()
@click.argument("job_id")
@one_line_errors
def retry(job_id: str) -> None:
    """Send the failed and cancelled shards of JOB_ID again."""
    from farm.lifecycle import retry_job

    farm = _farm()
    click.echo(f"{retry_job(farm, full_job_id(farm, job_id))} shard(s) sent again")


@main.command()
@click.argument("job_id")
@click.argument("scenes", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Approve every scene not approved yet.")
@one_line_errors
def approve(job_id: str, scenes: tuple[int, ...], every: bool) -> None:
    """Approve SCENES (numbered from 1) of JOB_ID, submitted with `approval: preview`: each
    renders at full quality with its preview's seed."""
    from farm.approval import approve_scenes
    from farm.errors import InputError

    if every == bool(scenes):
        raise InputError("name the scenes to approve (numbered from 1), or give --all")
    farm = _farm()
    approved = approve_scenes(farm, full_job_id(farm, job_id), list(scenes) or None)
    click.echo(
        f"job {approved.job_id}: scene(s) {', '.join(map(str, approved.scenes))} approved; "
        f"{approved.renders} render(s) in {approved.shards} shard(s) queued at full quality"
    )


@main.command()
@click.argument("job_id")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@one_line_errors
def fetch(job_id: str, out_dir: Path) -> None:
    """Download the finished renders of JOB_ID into OUT_DIR."""
    from sqlalchemy import select

    from farm.db.models import Render
    from farm.db.states import RenderStatus
    from farm.lifecycle import get_job
    from farm.recipe import render_filename
    from farm.storage.local import LocalStorage

    farm = _farm()
    job_id = full_job_id(farm, job_id)
    with farm.sessions() as session:
        get_job(session, job_id)
        rows = session.execute(
            select(Render.scene_index, Render.variant, Render.storage_key)
            .where(Render.job_id == job_id, Render.status == RenderStatus.DONE)
            .order_by(Render.scene_index, Render.variant)
        ).all()
    out = LocalStorage(out_dir)
    # Named by scene and variant here, not by the key: a render reused from another job (or
    # made by an earlier revision) lies under that one's name.
    for scene, variant, key in progress(
        rows, total=len(rows), desc=f"job {job_id[:8]}", unit="render"
    ):
        out.put(render_filename(scene, variant), farm.storage.get(key), "image/png")
    click.echo(f"{len(rows)} renders in {out_dir.resolve()}")


@main.command()
@click.option(
    "--devices", default="all", show_default=True, help="GPU indices (0,1), all, cpu or cpu:N."
)
@click.option(
    "--presets", default="tiny", show_default=True, help="Presets to host, comma separated."
)
@click.option("--beat", is_flag=True, help="Also run the reaper's schedule (one per farm).")
@click.option(
    "--cpu-threads",
    type=click.IntRange(1, 256),
    envvar="FARM_CPU_THREADS",
    help="Torch threads (and cores) of each CPU worker. Default: the cores split evenly.",
)
@click.option(
    "--pin-cpus/--no-pin-cpus",
    envvar="FARM_PIN_CPUS",
    default=True,
    show_default=True,
    help="Pin each CPU worker to its own cores, as a GPU worker is pinned to its card.",
)
@one_line_errors
def worker(devices: str, presets: str, beat: bool, cpu_threads: int | None, pin_cpus: bool) -> None:
    """Start one worker process per device, each pinned to its GPU (or its CPU cores)."""
    from workers.supervisor import run_workers

    sys.exit(
        run_workers(
            devices,
            [p for p in presets.split(",") if p],
            beat=beat,
            cpu_threads=cpu_threads,
            pin_cpus=pin_cpus,
        )
    )


@main.command()
@click.option("--devices", default="all", show_default=True)
@click.option("--presets", default="tiny", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="The dashboard's port on 127.0.0.1.",
)
@click.option("--dashboard/--no-dashboard", default=True, show_default=True)
@one_line_errors
def up(devices: str, presets: str, port: int, dashboard: bool) -> None:
    """Run the farm on this machine: migrate, then the dashboard and the workers (with the
    reaper's schedule). Ctrl-C stops everything."""
    from farm.db.migrate import upgrade
    from workers.supervisor import run_workers, start_dashboard

    settings = Settings.from_env()
    upgrade(settings.database_url)
    web = start_dashboard(settings, port) if dashboard else None
    if web is not None:
        click.echo(f"dashboard on http://127.0.0.1:{port}/ (farm tokens create to log in)")
    try:
        code = run_workers(devices, [p for p in presets.split(",") if p], beat=True)
    finally:
        if web is not None:
            web.terminate()
            web.wait(30)
    sys.exit(code)


for command in (
    jobs,
    status,
    workers,
    queues,
    drain,
    resume,
    requeue,
    gc,
    comic,
    revise,
    reroll,
    pick,
    evaluate_command,
    tokens,
    pause,
    unpause,
    priority,
    projects,
    usage,
):
    main.add_command(command)
