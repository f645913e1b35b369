"""`farm eval`: score a job's renders (or a folder of PNGs) for identity and prompt fidelity."""

from __future__ import annotations

from pathlib import Path

import click

from farm.errors import InputError
from farm.settings import Settings
from farmcli.errors import one_line_errors


@click.command("eval")
@click.argument("job_id", required=False)
@click.option(
    "--folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="Score the PNGs of a folder instead of a job.",
)
@click.option(
    "--photos",
    type=click.Path(path_type=Path, file_okay=False),
    help="The character's reference photos (with --folder).",
)
@click.option(
    "--clip",
    "clip_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A local CLIP model folder, for CLIP-T.",
)
@click.option(
    "--face-model",
    default="dlib",
    show_default=True,
    help="dlib, buffalo_l or antelopev2 (from FARM_MODELS_DIR).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the figures (and each render's) to this JSON file.",
)
@one_line_errors
def evaluate_command(
    job_id: str | None,
    folder: Path | None,
    photos: Path | None,
    clip_dir: Path | None,
    face_model: str,
    json_path: Path | None,
) -> None:
    """Mean face similarity, share of renders with a face, and CLIP-T."""
    from farm.evaluation import ClipScorer, evaluate, samples_from_folder
    from farm.identity.faces import open_face_analyzer, primary_face
    from farm.identity.photos import load_photo
    from farm.quality import Reference

    settings = Settings.from_env()
    analyzer = open_face_analyzer(face_model, settings.models_dir)
    if (job_id is None) == (folder is None):
        raise InputError("give a JOB_ID, or --folder with --photos")
    if folder is not None:
        if photos is None:
            raise InputError("--folder needs --photos: the character's reference photos")
        references = [(p.name, p.read_bytes()) for p in sorted(photos.iterdir()) if p.is_file()]
        samples = samples_from_folder(folder)
    else:
        references, samples = _job_samples(settings, job_id)
    embeddings = [
        primary_face(analyzer, load_photo(data, name), name).embedding for name, data in references
    ]
    clip = ClipScorer(clip_dir) if clip_dir else None
    result = evaluate(samples, analyzer, Reference.of(analyzer, embeddings), clip)
    click.echo(result.table())
    if json_path is not None:
        json_path.write_text(result.to_json())


def _job_samples(settings: Settings, job_id: str) -> tuple[list[tuple[str, bytes]], list]:
    import io

    from PIL import Image
    from sqlalchemy import select

    from farm.context import Farm
    from farm.db.models import Character, Render
    from farm.db.states import RenderStatus
    from farm.evaluation import Sample
    from farm.job_names import resolve_job_id
    from farm.lifecycle import get_job
    from farm.recipe import render_stem

    farm = Farm(settings)
    with farm.sessions() as session:
        job = get_job(session, resolve_job_id(session, job_id))
        character = session.get(Character, job.character_id)
        references = [(p.name, farm.storage.get(p.storage_key)) for p in character.photos]
        renders = list(
            session.scalars(
                select(Render)
                .where(Render.job_id == job.id, Render.status == RenderStatus.DONE)
                .order_by(Render.scene_index, Render.variant)
            )
        )
    samples = [
        Sample(
            render_stem(r.scene_index, r.variant),
            Image.open(io.BytesIO(farm.storage.get(r.storage_key))).convert("RGB"),
            r.prompt,
        )
        for r in renders
    ]
    return references, samples
