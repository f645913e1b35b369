"""The new-story page: pick a character, write scenes (one per line: `prompt | caption |
variants`, then settings such as `outfit: coat`), define the outfits and locations they name,
choose the settings, preview how many renders and shards it makes, submit. Or upload a story
file (YAML or JSON) and submit it for the chosen character."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from dashboard.context import farm
from dashboard.scope import MAX_ID, character_of
from dashboard.security import principal, requires
from dashboard.studio import cast_of, plan_of, story_for, submit
from farm.composition import Shot
from farm.control_spec import ControlType
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


# A scene line's settings, written `key: value` after the prompt in any order, so that a line
# stays readable in a story of hundreds of scenes; the other parts are its caption and variants.
SCENE_SETTING = re.compile(r"^(outfit|location|shot|control)\s*:(.*)$", re.IGNORECASE)
SCENE_LINE = "prompt | caption | variants, then settings like 'outfit: coat'"
CONTROL_SHAPE = "control: <file> <openpose|depth|canny> [scale 0-2]"
# The form's outfits and locations, one per line `name: text`, as the page's placeholders say.
NAMED_EXAMPLES = {
    "outfits": "coat: wearing a long red wool coat and a black scarf",
    "locations": "library: in a dim Victorian library with tall oak shelves",
}


def parse_scenes(text: str) -> list[dict[str, Any]]:
    """One scene per line, `prompt | caption | variants`, the last two optional, then any of
    `outfit: coat`, `location: library`, `shot: close-up`, `control: pose.png openpose 0.8`.
    Names and values are checked where a story file's are (`story_for`); only the line's shape
    is checked here."""
    scenes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompt, *parts = [part.strip() for part in line.split("|")]
        scene: dict[str, Any] = {"prompt": prompt}
        positional = []
        for part in parts:
            setting = SCENE_SETTING.match(part)
            if setting is None:
                positional.append(part)
                continue
            key, value = setting.group(1).lower(), setting.group(2).strip()
            if key in scene:
                raise InputError(f"scenes, line {number}: {key} is set twice; keep one")
            if value:
                scene[key] = scene_control(value, number) if key == "control" else value
        if len(positional) > 2:
            raise InputError(
                f"scenes, line {number}: write {SCENE_LINE} (got {len(positional)} parts "
                "after the prompt that are not settings)"
            )
        for key, value in zip(("caption", "variants"), positional, strict=False):
            if value:
                scene[key] = value
        scenes.append(scene)
    return scenes


def scene_control(value: str, number: int) -> dict[str, str]:
    """A line's `control: pose.png openpose 0.8`: a file chosen with the scenes, its type and
    its scale (the story's default when left out), read from the right so that a file name may
    hold spaces."""
    words = value.rsplit(maxsplit=2)
    if len(words) == 3 and _is_number(words[2]):
        return {"image": words[0], "type": words[1], "scale": words[2]}
    words = value.rsplit(maxsplit=1)
    if len(words) == 2:
        return {"image": words[0], "type": words[1]}
    raise InputError(
        f"scenes, line {number}: write {CONTROL_SHAPE}, e.g. control: pose.png openpose 0.8 "
        f"(got {value!r:.80})"
    )


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def named_prompts(text: str, field: str) -> dict[str, dict[str, str]]:
    """The form's outfits or locations, one per line `name: text`, as a story file writes them
    (`{name: {prompt: text}}`); the names and texts are judged by the story's own rules."""
    named: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, prompt = (part.strip() for part in line.partition(":"))
        if not (colon and name and prompt):
            raise InputError(
                f"{field}, line {number}: write 'name: text', e.g. "
                f"{NAMED_EXAMPLES[field]!r} (got {line.strip()!r:.80})"
            )
        if name in named:
            raise InputError(f"{field}, line {number}: {name!r} is defined twice; keep one")
        named[name] = {"prompt": prompt}
    return named


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
    outfits = named_prompts(form.get("outfits", ""), "outfits")
    if outfits:  # the picked character's, for this story (`story_for` puts them there)
        data["outfits"] = outfits
    locations = named_prompts(form.get("locations", ""), "locations")
    if locations:
        data["locations"] = locations
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
    """The control images chosen beside a story file or the scene lines, by file name (a
    browser sends no folder): the story names each by its path, matched here by its last
    part."""
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
        # A browser cannot put files back in a form: the page names those to choose again.
        chosen_controls=[f.filename for f in request.files.getlist("control_images") if f.filename],
        named_examples=NAMED_EXAMPLES,
        control_shape=CONTROL_SHAPE,
        shots=list(Shot),
        control_types=list(ControlType),
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
            control_files=control_uploads(),
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
