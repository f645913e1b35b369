"""`farm revise`, `farm reroll` and `farm pick`: the editorial loop from a terminal, on the same
service functions as the dashboard and the API. Scenes are numbered from 1, variants as their
files name them (`v1`, or `1`)."""

from __future__ import annotations

from pathlib import Path

import click

from farmcli.errors import one_line_errors
from farmcli.job_refs import full_job_id


@click.command()
@click.argument("job_ref", metavar="JOB")
@click.argument("story_file", type=click.Path(path_type=Path))
@click.option(
    "--fresh", is_flag=True, help="Render the changed scenes even where the project has them."
)
@one_line_errors
def revise(job_ref: str, story_file: Path, fresh: bool) -> None:
    """Make STORY_FILE the next revision of JOB: same characters, any scenes and settings.
    Only what changed renders; the job keeps its id and its earlier revisions."""
    from farm.context import Farm
    from farm.controls import files_beside, submitted_story
    from farm.db.models import Character, Job
    from farm.errors import InputError
    from farm.render.presets import PRESETS
    from farm.render.story_render import character_photos
    from farm.revisions import revise_job
    from farm.story import load_story

    farm = Farm()
    try:
        job_id = full_job_id(farm, job_ref)
        story = load_story(story_file, presets=PRESETS, limits=farm.settings.document_limits)
        with farm.sessions() as session:
            job = session.get_one(Job, job_id)
            character = session.get_one(Character, job.character_id)
            theirs = [photo.sha256 for photo in character.photos]
        if [photo.sha256 for photo in character_photos(story)] != theirs:
            raise InputError(
                f"{story_file}: character.photos: not the photos of job {job_id}'s character; "
                "a revision keeps the job's characters (submit a new job for other ones)"
            )
        story = submitted_story(farm.storage, story, files_beside(story))
        done = revise_job(farm, job_id, story, reuse=not fresh)
        click.echo(f"job {job_id} revision {done.revision}: {done.summary}")
        click.echo(
            f"{done.kept} kept, {done.reused} reused, {done.rendered} to render "
            f"({done.shards} shard(s)), {done.retired} retired to the history"
        )
    finally:
        farm.close()


@click.command()
@click.argument("job_ref", metavar="JOB")
@click.argument("scenes", metavar="SCENE...", nargs=-1, required=True, type=int)
@click.option("--variants", type=int, default=1, show_default=True, help="New variants per scene.")
@one_line_errors
def reroll(job_ref: str, scenes: tuple[int, ...], variants: int) -> None:
    """Queue new variants of SCENE(s) of JOB with new seeds; the old ones stay."""
    from farm.context import Farm
    from farm.db.models import Render
    from farm.rerolls import reroll as reroll_scenes

    farm = Farm()
    try:
        done = reroll_scenes(farm, full_job_id(farm, job_ref), list(scenes), variants=variants)
        with farm.sessions() as session:
            made = [session.get_one(Render, render_id) for render_id in done.render_ids]
            names = ", ".join(f"scene {r.scene_index + 1} v{r.variant}" for r in made)
        click.echo(f"job {done.job_id}: queued {names} ({done.shards} shard(s))")
    finally:
        farm.close()


@click.command()
@click.argument("job_ref", metavar="JOB")
@click.argument("scene", type=int)
@click.argument("variant")
@one_line_errors
def pick(job_ref: str, scene: int, variant: str) -> None:
    """Show VARIANT (v1, or 1) of SCENE in JOB's comic, PDF, CBZ and zip."""
    from farm.context import Farm
    from farm.db.models import Job
    from farm.errors import InputError
    from farm.picks import ENDED, pick_variant

    number = variant.removeprefix("v")
    if not number.isdigit():
        raise InputError(f"variant: as its file names it, e.g. v1 or 1 (got {variant!r})")
    farm = Farm()
    try:
        chosen = pick_variant(farm, full_job_id(farm, job_ref), scene, int(number))
        with farm.sessions() as session:
            ended = session.get_one(Job, chosen.render.job_id).status in ENDED
        then = "its comic is being built again" if ended else "its comic shows it once it ends"
        click.echo(
            f"job {chosen.render.job_id} scene {scene}: v{chosen.render.variant} picked; {then}"
        )
    finally:
        farm.close()
