"""The new-story page: pick a character, write scenes (one per line: `prompt | caption |
variants`), choose the settings, preview how many renders and shards it makes, submit. Or
upload a story file (YAML or JSON) and submit it for the chosen character."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from dashboard.context import farm
from dashboard.scope import MAX_ID, character_of
from dashboard.security import principal, requires
from dashboard.studio import cast_of, plan_of, story_for, submit
from farm.db.models import Character, Role
from farm.documents import parse_document
from farm.errors import InputError
from farm.identity.photos import MAX_PHOTO_BYTES
from farm.jobs import check_submission
from farm.render.presets import PRESETS
from farm.serving import default_preset, served_presets, waiting_note
from farm.story import MAX_CAST
from farm.styles import ASPECT_RATIOS, DEFAULT_STYLE, STYLES
from farm.webhooks import check_webhook_url

stories = Blueprint("stories", __name__)

# The form's preset when a live worker serves it; else the one most live workers serve.
USUAL_PRESET = "photomaker-v2"
# Form fields that go into the story as they are; pydantic turns "50" into 50 and names the
# field when it cannot.
STORY_FIELDS = ("preset", "style", "steps", "guidance", "style_strength", "seed", "variants")


def parse_scenes(text: str) -> list[dict[str, Any]]:
    """One scene per line, `prompt | caption | variants`, the last two optional."""
    scenes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split("|")]
        if len(parts) > 3:
            raise InputError(
                f"scenes, line {number}: write 'prompt | caption | variants' (at most two '|')"
            )
        scene: dict[str, Any] = {"prompt": parts[0]}
        if len(parts) > 1 and parts[1]:
            scene["caption"] = parts[1]
        if len(parts) > 2 and parts[2]:
            scene["variants"] = parts[2]
        scenes.append(scene)
    return scenes


def story_from_form(form: MultiDict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {key: form[key] for key in STORY_FIELDS if form.get(key, "").strip()}
    aspect = form.get("aspect", "")
    if aspect and aspect != "custom":
        data["aspect"] = aspect
    else:
        data.update({side: form[side] for side in ("width", "height") if form.get(side)})
    if form.get("negative_prompt", "").strip():
        data["negative_prompt"] = form["negative_prompt"]
    data["scenes"] = parse_scenes(form.get("scenes", ""))
    consistency = consistency_from_form(form)
    if consistency is not None:
        data["consistency"] = consistency
    return {**data, **story_options(form)}


def consistency_from_form(form: MultiDict[str, str]) -> dict[str, Any] | None:
    """The form's consistency fields as the story key (None: off, the story's default). The
    reference scenes are a count ("2": the first two) or scene numbers ("1, 4")."""
    mode = form.get("consistency_mode", "off")
    if mode == "off":
        return None
    consistency: dict[str, Any] = {"mode": mode}
    if form.get("consistency_strength", "").strip():
        consistency["strength"] = form["consistency_strength"].strip()
    references = form.get("reference_scenes", "").strip()
    if mode == "story" and references:
        numbers = [part.strip() for part in references.split(",")]
        if not all(number.isdigit() for number in numbers):
            raise InputError(
                f"reference scenes: {references!r} is neither a count (2) nor scene numbers (1, 4)"
            )
        as_list = "," in references
        consistency["reference_scenes"] = [int(n) for n in numbers] if as_list else int(numbers[0])
    return consistency


def story_options(form: MultiDict[str, str]) -> dict[str, Any]:
    """What both forms add to a story: its title, preview-first approval, and its cast."""
    options: dict[str, Any] = {}
    if form.get("title", "").strip():
        options["title"] = form["title"]
    if form.get("approval") == "preview":
        options["approval"] = "preview"
    cast = cast_from_form(form)
    if cast:
        options["cast"] = cast
    return options


def cast_from_form(form: MultiDict[str, str]) -> list[dict[str, Any]]:
    """The characters chosen for the other trigger words, a row each (an empty row: none)."""
    cast = []
    for row in range(1, MAX_CAST):
        chosen = form.get(f"cast_character_{row}", "").strip()
        if not chosen:
            continue
        if not chosen.isdigit():
            raise InputError(f"cast, row {row}: pick one of your characters")
        entry: dict[str, Any] = {"character_id": int(chosen)}
        trigger = form.get(f"cast_trigger_{row}", "").strip()
        if trigger:
            entry["trigger"] = trigger
        cast.append(entry)
    return cast


def story_from_file(form: MultiDict[str, str]) -> dict[str, Any]:
    upload = request.files.get("story_file")
    if upload is None or not upload.filename:
        raise InputError("story file: choose a YAML or JSON file to upload")
    limits = farm().settings.document_limits
    data = parse_document(upload.read(limits.max_bytes + 1), "story file", limits)
    if not isinstance(data, dict):
        raise InputError("story file: a story is a mapping with 'scenes' (and settings) at the top")
    character = data.pop("character", None)  # the one picked on the page, with its photos,
    if isinstance(character, dict) and "outfits" in character:  # in the story's outfits
        data["outfits"] = character["outfits"]
    file_cast = data.pop("cast", None) or []  # and so are the others, for their triggers
    options = story_options(form)
    if file_cast and "cast" not in options:
        triggers = ", ".join(
            str(p.get("trigger")) for p in file_cast if isinstance(p, dict) and p.get("trigger")
        )
        raise InputError(
            f"story file: cast: choose one of your characters for each other trigger word "
            f"({triggers or 'see the file'})"
        )
    return {**data, **options}


def control_uploads() -> dict[str, bytes]:
    """The control images uploaded beside a story file, by file name (a browser sends no
    folder): the story names each by its path, matched here by its last part."""
    files = {}
    for upload in request.files.getlist("control_images"):
        if upload.filename:
            name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
            files[name] = upload.read(MAX_PHOTO_BYTES + 1)  # one byte over is enough to refuse
    return files


def chosen_character_id(form: MultiDict[str, str]) -> int:
    raw = form.get("character_id", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise InputError("character: pick one of your characters (or make one first)")
    return int(raw)


def priority_of(form: MultiDict[str, str]) -> int:
    raw = form.get("priority", "5").strip() or "5"
    if not raw.lstrip("-").isdigit():
        raise InputError(f"priority: a whole number from 0 to 9 (got {raw!r})")
    return int(raw)


def _form_page(status: int = 200, error: str | None = None) -> tuple[str, int]:
    with farm().sessions() as session:
        characters = list(
            session.scalars(
                select(Character)
                .where(Character.project_id == principal().project_id, Character.deleted.is_(None))
                .order_by(Character.name, Character.id)
            )
        )
        served = served_presets(session)
    default = PRESETS[default_preset(served, USUAL_PRESET)]
    page = render_template(
        "stories/new.html",
        characters=characters,
        presets=[(preset, waiting_note(name, served)) for name, preset in PRESETS.items()],
        default_preset=default,
        styles=list(STYLES),
        default_style=DEFAULT_STYLE,
        aspects=list(ASPECT_RATIOS),
        max_cast=MAX_CAST,
        form=request.form if request.method == "POST" else MultiDict(request.args),
        error=error,
    )
    return page, status


@stories.get("/stories/new")
@requires(Role.ARTIST)
def new() -> tuple[str, int]:
    return _form_page()


@stories.post("/stories/new")
@requires(Role.ARTIST)
def create() -> Response | tuple[str, int]:
    form = request.form
    from_file = form.get("source") == "file"
    try:
        data = story_from_file(form) if from_file else story_from_form(form)
        submitted = submit(
            farm(),
            principal(),
            chosen_character_id(form),
            data,
            priority=priority_of(form),
            webhook_url=form.get("webhook_url", "").strip() or None,
            source="story file" if from_file else "story",
            control_files=control_uploads() if from_file else None,
        )
    except InputError as error:
        return _form_page(400, str(error))
    flash(f"Submitted: {submitted.renders} renders in {submitted.shards} shards.")
    return redirect(url_for("jobs.detail", job_id=submitted.job_id))


@stories.post("/stories/preview")
@requires(Role.ARTIST)
def preview() -> Response | tuple[Response, int]:
    """What the form would make, for the page's preview line; nothing is written."""
    form = request.form
    try:
        character_id = chosen_character_id(form)
        data = story_from_form(form)
        with farm().sessions() as session:
            character = character_of(session, principal(), character_id)
            story = story_for(character, data, cast=cast_of(session, principal(), data))
        check_submission(story, priority_of(form))
        if form.get("webhook_url", "").strip():
            check_webhook_url(form["webhook_url"].strip(), farm().settings)
        plan = plan_of(farm(), story)
    except InputError as error:
        return jsonify(error=str(error)), 400
    return jsonify(vars(plan))
