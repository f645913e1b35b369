"""The story spec: one character, many scenes, and how they become a list of renders.

A story arrives as a YAML/JSON file (CLI) or a JSON body (API); both go through the same pydantic
models, so the rules live in one place. Every problem found is reported at once, each naming its
field path (`scenes[3].prompt`), because a studio fixing a 200-scene file one error per run would
rightly give up.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from PIL import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from farm import styles
from farm.composition import (
    Dressing,
    Location,
    Name,
    Outfit,
    Shot,
    compose_prompt,
    worn_outfits,
)
from farm.consistency import Consistency
from farm.control_spec import SceneControl
from farm.documents import DEFAULT_LIMITS, DocumentLimits, check_size, parse_document
from farm.errors import InputError

MAX_PHOTOS = 16
MAX_CAST = 4  # people in one story; each costs identity tokens in every prompt
MAX_SCENES = 10_000
MAX_RENDERS = 10_000
MAX_SEED = 2**32 - 1
MAX_VARIANTS = 16
_MAX_LISTED_PROBLEMS = 20

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Variants = Annotated[int, Field(ge=1, le=MAX_VARIANTS)]
Side = Annotated[int, Field(ge=64, le=2048, multiple_of=8)]


def _photo_is_file(photo: str, info: ValidationInfo) -> str:
    # Checked only when the caller says where relative paths start (a story loaded from a file);
    # an API body names photos that are not on this machine's disk.
    source_dir = (info.context or {}).get("source_dir")
    if source_dir is not None:
        path = Path(source_dir) / photo
        if not path.is_file():
            raise PydanticCustomError(
                "photo_not_a_file", "photo {path} is not a file", {"path": str(path)}
            )
    return photo


Photo = Annotated[str, StringConstraints(min_length=1), AfterValidator(_photo_is_file)]


def _is_class_word(word: str) -> str:
    if not word.isascii() or not word.isalpha() or len(word) > 30:
        raise PydanticCustomError(
            "class_word", "the class word must be one word of letters, e.g. 'man' or 'woman'"
        )
    return word


def _is_trigger(word: str) -> str:
    if not word.isascii() or not word.isalnum() or len(word) > 20:
        raise PydanticCustomError(
            "trigger", "the trigger must be one word of 1 to 20 letters or digits, e.g. 'img'"
        )
    return word


class Character(BaseModel):
    """The one person the story is about, shown to PhotoMaker by reference photos."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    class_word: Annotated[str, AfterValidator(_is_class_word)] = Field(
        description="The word the trigger follows in every prompt: man, woman, girl, boy, ..."
    )
    trigger: Annotated[str, AfterValidator(_is_trigger)] = "img"
    photos: list[Photo] = Field(min_length=1, max_length=MAX_PHOTOS)
    face_crop: bool = Field(
        default=False, description="Crop the photos around the face for the CLIP branch."
    )
    outfits: dict[Name, Outfit] = Field(
        default_factory=dict,
        description="Named outfits (clothes, hair, props) a scene may put this character in.",
    )

    @field_validator("trigger")
    @classmethod
    def _trigger_is_not_class_word(cls, trigger: str, info: ValidationInfo) -> str:
        class_word = info.data.get("class_word")
        if class_word is not None and trigger.casefold() == class_word.casefold():
            raise PydanticCustomError(
                "trigger_is_class_word",
                "the trigger word must differ from the class word '{class_word}': "
                "the encoder drops the trigger and keeps the class word",
                {"class_word": class_word},
            )
        return trigger


class Scene(BaseModel):
    """One illustration: a prompt naming the character, rendered `variants` times."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    caption: Annotated[str, StringConstraints(max_length=500)] | None = None
    seed: Seed | None = Field(default=None, description="This scene's base seed.")
    negative: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None, description="Replaces the story's negative_prompt for this scene."
    )
    variants: Variants | None = Field(default=None, description="Overrides the story's.")
    wide: bool = Field(default=False, description="A double-width panel on comic pages.")
    outfit: Name | dict[str, Name] | None = Field(
        default=None,
        description="The character's outfit by name, or trigger -> outfit name for each "
        "character of the cast who wears one.",
    )
    location: Name | None = Field(default=None, description="One of the story's locations.")
    shot: Shot | None = Field(default=None, description="The framing, in words.")
    control: SceneControl | None = Field(
        default=None, description="A pose, depth or edge map that steers the composition."
    )


@dataclass(frozen=True)
class PlannedRender:
    """One image to make: everything a worker needs besides the character and the settings."""

    scene_index: int
    variant: int
    prompt: str
    negative: str
    seed: int
    caption: str | None
    # The scene's control (`farm.controls`), and its map once read (`farm.controls.attach`).
    control: SceneControl | None = None
    control_image: Image.Image | None = None
    # The outfits and location with reference images the scene uses (`Story.plan`), their
    # images decoded once read (`farm.controls.attach`).
    dressing: tuple[Dressing, ...] = ()


def derive_seed(base: int, scene: int, variant: int) -> int:
    """A seed for a scene without its own, fixed by (base, scene index, variant) alone.

    Hashing rather than `base + counter` means appending scenes, or changing another scene's
    variants, leaves every existing render's seed, and so its picture, unchanged; sha256 rather
    than `hash()` or `random` gives the same number on every machine and Python version.
    """
    digest = hashlib.sha256(f"{base}:{scene}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


_WORD_OR_PUNCTUATION = re.compile(r"\w+|[^\w\s]+")
# CLIP's pre-tokenizer (letters, single digits, runs of other symbols): BPE makes at least one
# token of each piece, so counting pieces gives the fewest tokens a prompt can take.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")
PROMPT_TOKENS = 77  # CLIP's context, start and end-of-text tokens included


def _trigger_problem(prompt: str, class_word: str, trigger: str) -> str | None:
    """What is wrong with where a prompt puts the trigger word, or None when it is right.

    Punctuation counts as a token of its own, as in CLIP's tokenizer: "man-img" does not put the
    trigger directly after the class word, "man img," does.
    """
    tokens = [token.casefold() for token in _WORD_OR_PUNCTUATION.findall(prompt)]
    positions = [i for i, token in enumerate(tokens) if token == trigger.casefold()]
    example = f"e.g. 'a {class_word} {trigger} walking'"
    if not positions:
        return (
            f"has no trigger word {trigger!r}; write it right after the class word "
            f"{class_word!r}, {example}"
        )
    if len(positions) > 1:
        return (
            f"the trigger word {trigger!r} appears {len(positions)} times; use it once, "
            f"right after the class word {class_word!r}, {example}"
        )
    position = positions[0]
    if position == 0 or tokens[position - 1] != class_word.casefold():
        return (
            f"the trigger word {trigger!r} must directly follow the class word {class_word!r}, "
            f"{example}"
        )
    return None


def _identity_end(prompt: str, tokens: dict[str, int]) -> int | None:
    """The earliest place the prompt's last identity token can take once each trigger is
    dropped and its class word repeated `tokens[trigger]` times (None: no trigger).

    Counted in CLIP pieces, the fewest tokens the text can become, so a prompt refused here is
    refused by every CLIP vocabulary; the exact count, on the preset's own tokenizer, is made
    again when the prompt is encoded.
    """
    length, last = 1, None  # the start-of-text token
    for index, piece in enumerate(_CLIP_PIECES.findall(prompt.casefold())):
        count = tokens.get(piece)
        if count is not None and index > 0:
            length += count - 1  # the trigger goes; the class word before it repeats
            last = length - 1
        else:
            length += 1
    return last


def _length_problem(prompt: str, styled: str, tokens: dict[str, int]) -> str | None:
    last = _identity_end(styled, tokens)
    if last is None or last < PROMPT_TOKENS:
        return None
    return (
        f"too long for its identity tokens: with the style's words, they would end at token "
        f"{last + 1} or later, but a prompt holds {PROMPT_TOKENS - 1}; shorten the text before "
        "the class word or use fewer reference photos"
    )


def _trigger_in(negative: str, people: list[Character]) -> Character | None:
    """Whose trigger word a negative prompt names: the text encoders have no embedding for a
    trigger outside the identity prompt, so every render of it would fail."""
    words = {word.casefold() for word in _WORD_OR_PUNCTUATION.findall(negative)}
    return next((p for p in people if p.trigger.casefold() in words), None)


def _negative_problem(negative: str, people: list[Character]) -> str | None:
    person = _trigger_in(negative, people)
    if person is None:
        return None
    return (
        f"contains the trigger word {person.trigger!r} of {person.name}: a trigger word belongs "
        "only right after the class word of a prompt; remove it"
    )


def _cast_problem(prompt: str, people: list[Character]) -> str | None:
    """With several characters a scene names one or more of them, each trigger placed as for
    one character; a word shaped like a trigger that belongs to nobody is named as unknown."""
    tokens = {token.casefold() for token in _WORD_OR_PUNCTUATION.findall(prompt)}
    present = [p for p in people if p.trigger.casefold() in tokens]
    triggers = ", ".join(repr(p.trigger) for p in people)
    shapes = {re.sub(r"\d+$", "", p.trigger.casefold()) for p in people}
    known = {p.trigger.casefold() for p in people}
    unknown = sorted(
        t for t in tokens if t not in known and re.sub(r"\d+$", "", t) in shapes and t[-1].isdigit()
    )
    if unknown:
        return f"unknown trigger word {unknown[0]!r}; this story's triggers are {triggers}"
    if not present:
        return f"names no character: put one of the trigger words {triggers} after its class word"
    for person in present:
        problem = _trigger_problem(prompt, person.class_word, person.trigger)
        if problem is not None:
            return problem
    return None


class Story(BaseModel):
    """A character and the scenes to illustrate, with the settings shared by all renders.

    Validate with `context={"presets": ..., "source_dir": ...}` (as `parse_story` does) to also
    check the preset name and that the photos exist; without a context those two checks are
    skipped, which suits schema work and bodies whose photos live elsewhere.
    """

    model_config = ConfigDict(extra="forbid")

    character: Character
    cast: list[Character] = Field(
        default_factory=list,
        max_length=MAX_CAST - 1,
        description="Other people who may share a scene with the character, each with its own "
        "trigger word (e.g. 'a man img1 and a woman img2 at a table').",
    )
    locations: dict[Name, Location] = Field(
        default_factory=dict, description="Recurring places, named, that scenes are set in."
    )
    preset: Annotated[str, StringConstraints(min_length=1)]
    style: str = Field(default=styles.DEFAULT_STYLE, description="A style name or its slug.")
    negative_prompt: Annotated[str, StringConstraints(max_length=1000)] = (
        styles.DEFAULT_NEGATIVE_PROMPT
    )
    width: Side | None = None
    height: Side | None = None
    aspect: str | None = Field(default=None, description="An aspect preset, e.g. '3:2'.")
    steps: int = Field(default=50, ge=1, le=150)
    guidance: float = Field(default=5.0, ge=0, le=30)
    style_strength: float = Field(
        default=20,
        ge=0,
        le=100,
        description="Percent of the steps run on the text-only prompt; 15-50 is useful.",
    )
    seed: Seed = 0
    variants: Variants = 1
    min_face_similarity: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Identity QC: a render whose face scores under this (cosine similarity to "
        "the character's photos) is rendered again with new seeds; the best is kept.",
    )
    qc_retries: int = Field(
        default=2, ge=0, le=5, description="How many new seeds a render under the bar may try."
    )
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)] | None = Field(
        default=None,
        description="The job's name, which its downloads carry (default: the character and date).",
    )
    approval: Literal["none", "preview"] = Field(
        default="none",
        description="'preview': render every scene fast at low resolution first, and render at "
        "full quality, with the same seeds, only the scenes approved.",
    )
    scenes: list[Scene] = Field(min_length=1, max_length=MAX_SCENES)
    consistency: Consistency = Field(
        default_factory=Consistency,
        validate_default=True,  # reference images are judged there, with consistency off too
        description="Consistent self-attention across scenes: clothes, hair and props kept "
        "from scene to scene (off by default).",
    )

    _source_dir: Path | None = PrivateAttr(default=None)

    @field_validator("preset")
    @classmethod
    def _preset_is_known(cls, preset: str, info: ValidationInfo) -> str:
        presets = (info.context or {}).get("presets")
        if presets is not None and preset not in presets:
            raise PydanticCustomError(
                "unknown_preset",
                "unknown preset '{preset}'; choose one of: {known}",
                {"preset": preset, "known": ", ".join(sorted(presets))},
            )
        return preset

    @field_validator("style")
    @classmethod
    def _style_is_canonical(cls, style: str, info: ValidationInfo) -> str:
        style = styles.canonical_style(style)
        person = _trigger_in(styles.STYLES[style][1], _people(info))
        if person is not None:
            raise PydanticCustomError(
                "trigger_in_negative",
                "the negative prompt of style '{style}' contains the trigger word '{trigger}' of "
                "{name}; choose another trigger word or another style",
                {"style": style, "trigger": person.trigger, "name": person.name},
            )
        return style

    @field_validator("negative_prompt")
    @classmethod
    def _negative_has_no_trigger(cls, negative: str, info: ValidationInfo) -> str:
        problem = _negative_problem(negative, _people(info))
        if problem is not None:
            raise PydanticCustomError("trigger_in_negative", "{problem}", {"problem": problem})
        return negative

    @field_validator("aspect")
    @classmethod
    def _aspect_is_canonical(cls, aspect: str | None, info: ValidationInfo) -> str | None:
        if aspect is None:
            return None
        styles.resolve_size(aspect, info.data.get("width"), info.data.get("height"))
        return styles.canonical_aspect(aspect)

    @field_validator("cast")
    @classmethod
    def _triggers_are_distinct(cls, cast: list[Character], info: ValidationInfo) -> list[Character]:
        lead = info.data.get("character")
        seen = {lead.trigger.casefold()} if lead is not None else set()
        for person in cast:
            if person.trigger.casefold() in seen:
                raise PydanticCustomError(
                    "trigger_taken",
                    "the trigger word '{trigger}' of {name} is already taken: every character "
                    "needs its own (e.g. img1, img2)",
                    {"trigger": person.trigger, "name": person.name},
                )
            seen.add(person.trigger.casefold())
        return cast

    @field_validator("scenes")
    @classmethod
    def _scenes_fit_character(cls, scenes: list[Scene], info: ValidationInfo) -> list[Scene]:
        # A field validator rather than a model one, so these problems are listed together with
        # those of the other fields instead of only after they are fixed.
        problems: list[InitErrorDetails] = []
        character = info.data.get("character")
        if character is not None and "cast" in info.data:
            people = [character, *info.data["cast"]]
            tokens = _identity_tokens(people, info)
            style = info.data.get("style")
            locations = info.data.get("locations", {})
            for index, scene in enumerate(scenes):
                dressing = _dressing_problems(scene, people, locations)
                problems += [_problem(text, (index, *loc), value) for text, loc, value in dressing]
                problem = (
                    _trigger_problem(scene.prompt, character.class_word, character.trigger)
                    if len(people) == 1
                    else _cast_problem(scene.prompt, people)
                )
                if problem is None and style is not None and not dressing:
                    composed = _composed_prompt(scene, people, locations)
                    styled, _ = styles.apply_style(style, composed, "")
                    problem = _length_problem(scene.prompt, styled, tokens)
                if problem is not None:
                    problems.append(_problem(problem, (index, "prompt"), scene.prompt))
                if scene.negative is not None:
                    problem = _negative_problem(scene.negative, people)
                    if problem is not None:
                        problems.append(_problem(problem, (index, "negative"), scene.negative))
        story_variants = info.data.get("variants")
        if story_variants is not None:
            total = sum(scene.variants or story_variants for scene in scenes)
            if total > MAX_RENDERS:
                message = f"{total} renders (scenes x variants); at most {MAX_RENDERS} per story"
                problems.append(_problem(message, (), f"{len(scenes)} scenes"))
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return scenes

    @field_validator("consistency")
    @classmethod
    def _consistency_fits(cls, consistency: Consistency, info: ValidationInfo) -> Consistency:
        scenes = info.data.get("scenes")
        problem = None if scenes is None else consistency.problem(len(scenes))
        presets = (info.context or {}).get("presets")
        preset = presets.get(info.data.get("preset")) if isinstance(presets, Mapping) else None
        imaged = _with_images(_people(info), info.data.get("locations", {}))
        if problem is None and preset and not preset.consistency and consistency.enabled:
            problem = (
                f"preset {preset.name!r} does not support consistency (its few-step LoRA was "
                "distilled on the UNet's own attention); use mode 'off' or a preset such as "
                + ", ".join(repr(name) for name, p in presets.items() if p.consistency)
            )
        elif problem is None and preset and not preset.consistency and imaged:
            problem = (
                f"preset {preset.name!r} does not support reference images ({imaged[0]} has "
                "images): they act through consistent self-attention, which its few-step LoRA "
                "was not distilled with; remove the images or use a preset such as "
                + ", ".join(repr(name) for name, p in presets.items() if p.consistency)
            )
        if problem is not None:
            raise PydanticCustomError("consistency", "{problem}", {"problem": problem})
        return consistency

    @model_validator(mode="after")
    def _remember_source_dir(self, info: ValidationInfo) -> Story:
        source_dir = (info.context or {}).get("source_dir")
        self._source_dir = None if source_dir is None else Path(source_dir)
        return self

    @property
    def source_dir(self) -> Path | None:
        """Where relative photo paths start; set from the validation context, never the body."""
        return self._source_dir

    @property
    def characters(self) -> list[Character]:
        """The character first, then the rest of the cast."""
        return [self.character, *self.cast]

    def photo_paths(self, character: Character | None = None) -> list[Path]:
        base = self._source_dir or Path()
        return [base / photo for photo in (character or self.character).photos]

    def render_size(self) -> tuple[int, int]:
        return styles.resolve_size(self.aspect, self.width, self.height)

    def plan(self) -> list[PlannedRender]:
        """Every scene x variant, in order, with its styled prompts and seed."""
        renders = []
        for index, scene in enumerate(self.scenes):
            negative = self.negative_prompt if scene.negative is None else scene.negative
            composed = _composed_prompt(scene, self.characters, self.locations)
            prompt, negative = styles.apply_style(self.style, composed, negative)
            for variant in range(scene.variants or self.variants):
                if scene.seed is None:
                    seed = derive_seed(self.seed, index, variant)
                else:
                    # Wrapped so that every seed stays in the range a story may name.
                    seed = (scene.seed + variant) % (MAX_SEED + 1)
                renders.append(
                    PlannedRender(
                        index,
                        variant,
                        prompt,
                        negative,
                        seed,
                        scene.caption,
                        scene.control,
                        dressing=self.dressing(index),
                    )
                )
        return renders

    def dressing(self, index: int) -> tuple[Dressing, ...]:
        """Scene `index`'s outfits (in cast order) and location that have reference images: a
        worker reads them from its job's story, as it reads a scene's control."""
        scene = self.scenes[index]
        worn = worn_outfits(scene.outfit, self.character.trigger)
        used: list[Outfit | Location] = [
            p.outfits[worn[p.trigger]] for p in self.characters if p.trigger in worn
        ]
        if scene.location is not None:
            used.append(self.locations[scene.location])
        return tuple(
            Dressing(part.prompt, tuple(part.images), self.consistency)
            for part in used
            if part.images
        )


def _dressing_problems(
    scene: Scene, people: list[Character], locations: Mapping[str, Location]
) -> list[tuple[str, tuple[str, ...], Any]]:
    """The outfits and the location a scene names that the story does not define."""
    problems: list[tuple[str, tuple[str, ...], Any]] = []
    by_trigger = {p.trigger: p for p in people}
    for trigger, name in worn_outfits(scene.outfit, people[0].trigger).items():
        person = by_trigger.get(trigger)
        if person is None:
            known = ", ".join(repr(t) for t in by_trigger)
            problems.append(
                (
                    f"no character has the trigger {trigger!r}; the story's are {known}",
                    ("outfit",),
                    scene.outfit,
                )
            )
        elif name not in person.outfits:
            defined = ", ".join(repr(o) for o in person.outfits) or "none"
            problems.append(
                (
                    f"the character {person.name} has no outfit {name!r} (defined: {defined}); "
                    "add it under the character's outfits or fix the name",
                    ("outfit",),
                    scene.outfit,
                )
            )
    if scene.location is not None and scene.location not in locations:
        defined = ", ".join(repr(name) for name in locations) or "none"
        problems.append(
            (
                f"the story has no location {scene.location!r} (defined: {defined}); add it under "
                "locations or fix the name",
                ("location",),
                scene.location,
            )
        )
    return problems


def _with_images(people: list[Character], locations: Mapping[str, Location]) -> list[str]:
    """The outfits and locations that have reference images, named as a story file does."""
    named = [
        f"outfit {name!r} of {person.name}"
        for person in people
        for name, outfit in person.outfits.items()
        if outfit.images
    ]
    return named + [f"location {name!r}" for name, place in locations.items() if place.images]


def _composed_prompt(
    scene: Scene, people: list[Character], locations: Mapping[str, Location]
) -> str:
    """The scene's prompt with what it wears, where it is and its framing (farm.composition)."""
    worn = worn_outfits(scene.outfit, people[0].trigger)
    outfits = [p.outfits[worn[p.trigger]] for p in people if p.trigger in worn]
    location = None if scene.location is None else locations[scene.location]
    return compose_prompt(scene.prompt, outfits, location, scene.shot)


def _people(info: ValidationInfo) -> list[Character]:
    """The characters validated so far (a field that failed is missing from `info.data`)."""
    character = info.data.get("character")
    return [] if character is None else [character, *info.data.get("cast", [])]


def _identity_tokens(people: list[Character], info: ValidationInfo) -> dict[str, int]:
    """Each trigger's ID tokens: photos x 1 (V1) or x 2 (V2); x 1 when the preset is unknown,
    which keeps `_identity_end` a lower bound."""
    presets = (info.context or {}).get("presets")
    preset = presets.get(info.data.get("preset")) if isinstance(presets, Mapping) else None
    per_photo = 1 if preset is None else preset.tokens_per_photo
    return {p.trigger.casefold(): len(p.photos) * per_photo for p in people}


def _problem(message: str, loc: tuple[str | int, ...], value: Any) -> InitErrorDetails:
    # The message goes in as a context value, not as the template, so braces in it stay literal.
    return InitErrorDetails(
        type=PydanticCustomError("story", "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


def parse_story(
    data: Any,
    *,
    presets: Collection[str],
    source: str = "story",
    source_dir: Path | None = None,
) -> Story:
    """Validate a story given as data; every problem becomes one line of one `InputError`.

    `source` names the story in messages (the file name for the CLI); with `source_dir`, photo
    paths are resolved from there and must be files.
    """
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: a story must be a mapping with 'character' and 'scenes' at the top "
            f"(got {type(data).__name__})"
        )
    context = {"presets": presets, "source_dir": source_dir}
    try:
        return Story.model_validate(data, context=context)
    except ValidationError as error:
        raise InputError(_describe(error, source)) from None


def load_story(
    path: Path, *, presets: Collection[str], limits: DocumentLimits = DEFAULT_LIMITS
) -> Story:
    """Read a story file, JSON or YAML whatever its extension, photos relative to its folder.

    Its size is checked before it is read, and its nesting before it is parsed (`limits`, from
    Settings.document_limits): a hostile file costs a line on stderr, not a traceback.
    """
    try:
        check_size(path.stat().st_size, str(path), limits)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such story file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the story file ({error})") from None
    data = parse_document(raw, str(path), limits)
    return parse_story(data, presets=presets, source=str(path), source_dir=path.parent)


def _describe(error: ValidationError, source: str) -> str:
    lines = [_describe_problem(problem, source) for problem in error.errors()]
    if len(lines) > _MAX_LISTED_PROBLEMS:
        hidden = len(lines) - _MAX_LISTED_PROBLEMS
        lines = [*lines[:_MAX_LISTED_PROBLEMS], f"{source}: ... and {hidden} more problems"]
    return "\n".join(lines)


def _describe_problem(problem: Any, source: str) -> str:
    loc = problem["loc"]
    kind = problem["type"]
    path = _field_path(loc) or "(top level)"
    # scenes[2] is what the file says; scene 3 is what a person sees in files and pages.
    in_scene = len(loc) > 1 and loc[0] == "scenes" and isinstance(loc[1], int)
    scene = f"scene {loc[1] + 1}" if in_scene else ""
    if kind == "missing":
        return f"{source}: {path}: required field missing{f' ({scene})' if scene else ''}"
    if kind == "extra_forbidden":
        message = _unknown_field_message(loc)
    elif kind == "value_error":
        message = str(problem["ctx"]["error"])
    else:
        message = problem["msg"][:1].lower() + problem["msg"][1:]
    seen = f"{scene}; " if scene else ""
    return f"{source}: {path}: {message} ({seen}got {_shorten(problem['input'])})"


def _field_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def _unknown_field_message(loc: tuple[str | int, ...]) -> str:
    """Name the fields allowed where an unknown one was found, and the likely intended one."""
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown field"
    known = list(model.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return f"unknown field; {hint}fields here: {', '.join(known)}"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Story
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = field.annotation
        if get_origin(inner) is list:
            inner = get_args(inner)[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
