"""The whole PhotoMaker pipeline against a plain implementation of the reference algorithm.

`ReferencePhotoMaker` below is written from TencentARC's published pipeline
(`photomaker/pipeline.py`: `encode_prompt_with_trigger_word`, the text-only prompt made by
decoding the prompt's tokens without the trigger, diffusers' `encode_prompt` for it and for the
negative, the denoising loop that switches from the text-only to the ID prompt after
`start_merge_step`) and from the description in shared/design/PHOTOMAKER.md. It shares no code
with `farm.render.pipeline`: the SDXL parts come from diffusers' own `StableDiffusionXLPipeline`
loaded from the tiny preset's folder, the PhotoMaker LoRA is merged into that UNet by hand as
`fuse_lora` merges it, and the ID tokens are fused by the transcribed reference `FuseModule`
(`tests/identity/reference_photomaker.py`) loaded from the preset's checkpoint. The ID tokens
themselves are the farm encoder's: `tests/identity/test_encoders.py` checks those against the
reference encoders number for number.

The farm renders every case of a group as one batch (several scenes, different prompts and
negatives); the reference renders each scene alone, as its pipeline does. Tolerances: 1e-5 on
every embedding, 1e-3 on the final latents (fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from farm.identity.tokens import IdentityTokens
from farm.render.loading import LoadedPreset, load_preset
from farm.render.pipeline import SceneRender, StepState, start_merge_step
from farm.render.presets import get_preset
from farm.render.tiny import TINY_BUILD
from farm.styles import STYLES, apply_style

from ..identity.reference_photomaker import FuseModule

EMBEDS_ATOL = 1e-5
LATENTS_ATOL = 1e-3
STEPS, GUIDANCE, STYLE_STRENGTH, SIZE = 4, 5.0, 30, 64  # merge after step 1: both phases run


# ------------------------------------------------------------------ the reference algorithm


class ReferencePhotoMaker:
    """PhotoMaker's SDXL pipeline, one prompt per call, as the reference runs it."""

    def __init__(self, folder: Path, checkpoint: Path, tokens_per_image: int) -> None:
        self.sdxl = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
        self.tokens_per_image = tokens_per_image
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self._merge_lora(state["lora_weights"])
        encoder = state["id_encoder"]
        width = encoder["fuse_module.layer_norm.weight"].shape[0]
        self.fuse = FuseModule(width).eval()
        self.fuse.load_state_dict(
            {k.removeprefix("fuse_module."): v for k, v in encoder.items() if "fuse_module" in k}
        )

    def _merge_lora(self, lora: dict[str, torch.Tensor]) -> None:
        """W += up @ down for every `unet.<attn>.processor.to_{q,k,v,out}_lora` pair, the
        legacy layout's rank-scaled alpha making the scale 1, as `fuse_lora()` merges it."""
        for key, down in lora.items():
            if not key.endswith(".down.weight"):
                continue
            up = lora[key.replace(".down.", ".up.")]
            path, proj = key.removeprefix("unet.").split(".processor.")
            attention = self.sdxl.unet.get_submodule(path)
            name = proj.removesuffix("_lora.down.weight")
            layer = attention.to_out[0] if name == "to_out" else getattr(attention, name)
            with torch.no_grad():
                layer.weight += up.float() @ down.float()

    def register(self, trigger: str) -> None:
        for tokenizer in (self.sdxl.tokenizer, self.sdxl.tokenizer_2):
            tokenizer.add_tokens([trigger], special_tokens=True)

    @torch.no_grad()
    def encode_prompt_with_trigger_word(
        self, prompt: str, trigger: str, num_id_images: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        trigger_id = self.sdxl.tokenizer_2.convert_tokens_to_ids(trigger)
        count = num_id_images * self.tokens_per_image
        embeds, pooled, mask = [], None, None
        pairs = (
            (self.sdxl.tokenizer, self.sdxl.text_encoder),
            (self.sdxl.tokenizer_2, self.sdxl.text_encoder_2),
        )
        for tokenizer, text_encoder in pairs:
            input_ids = tokenizer.encode(prompt)
            clean, class_index = [], []
            for token_id in input_ids:
                if token_id == trigger_id:
                    class_index.append(len(clean) - 1)
                else:
                    clean.append(token_id)
            assert len(class_index) == 1, "exactly one trigger word"
            index = class_index[0]
            clean = clean[:index] + [clean[index]] * count + clean[index + 1 :]
            max_len = tokenizer.model_max_length
            if len(clean) > max_len:
                clean = clean[:max_len]
            else:
                clean = clean + [tokenizer.pad_token_id] * (max_len - len(clean))
            mask = torch.tensor([[index <= i < index + count for i in range(len(clean))]])
            out = text_encoder(torch.tensor([clean]), output_hidden_states=True)
            pooled = out[0]  # the last encoder's wins, as in the reference
            embeds.append(out.hidden_states[-2])
        return torch.cat(embeds, dim=-1), pooled, mask

    def text_only(self, prompt: str, trigger: str) -> str:
        tokens = self.sdxl.tokenizer.encode(prompt, add_special_tokens=False)
        tokens.remove(self.sdxl.tokenizer.convert_tokens_to_ids(trigger))
        return self.sdxl.tokenizer.decode(tokens)

    @torch.no_grad()
    def embeds(
        self, prompt: str, negative: str | None, trigger: str, id_tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`id_tokens` is `[N, T, D]`: N photos, T tokens each."""
        prompt_embeds, pooled, mask = self.encode_prompt_with_trigger_word(
            prompt, trigger, id_tokens.shape[0]
        )
        fused = self.fuse(prompt_embeds.clone(), id_tokens[None], mask)
        text, negative_embeds, text_pooled, negative_pooled = self.sdxl.encode_prompt(
            prompt=self.text_only(prompt, trigger),
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
        )
        return dict(
            id_prompt=fused[0],
            id_pooled=pooled[0],
            text_prompt=text[0],
            text_pooled=text_pooled[0],
            negative=negative_embeds[0],
            negative_pooled=negative_pooled[0],
        )

    @torch.no_grad()
    def final_latents(self, embeds: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
        unet = self.sdxl.unet
        scheduler = EulerDiscreteScheduler.from_config(self.sdxl.scheduler.config)
        scheduler.set_timesteps(STEPS)
        generator = torch.Generator("cpu").manual_seed(seed)
        side = SIZE // self.sdxl.vae_scale_factor
        latents = torch.randn((1, unet.config.in_channels, side, side), generator=generator)
        latents = latents * scheduler.init_noise_sigma
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
        merge = start_merge_step_of_reference(STYLE_STRENGTH, STEPS)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            phase = "text" if i <= merge else "id"
            cond = torch.stack([embeds["negative"], embeds[f"{phase}_prompt"]])
            pooled = torch.stack([embeds["negative_pooled"], embeds[f"{phase}_pooled"]])
            noise = unet(
                model_in,
                t,
                encoder_hidden_states=cond,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                return_dict=False,
            )[0]
            uncond, text = noise.chunk(2)
            noise = uncond + GUIDANCE * (text - uncond)
            latents = scheduler.step(noise, t, latents, generator=generator, return_dict=False)[0]
        return latents[0]


def start_merge_step_of_reference(style_strength_ratio: float, steps: int) -> int:
    # The demo app's formula, written out again rather than imported.
    step = int(float(style_strength_ratio) / 100 * steps)
    return 30 if step > 30 else step


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    prompt: str
    negative: str | None
    seed: int


@dataclass(frozen=True)
class Group:
    """Scenes rendered by the farm as one batch: one identity, one trigger."""

    name: str
    trigger: str
    class_word: str
    photos: int
    cases: Sequence[Case]


def filler(count: int) -> str:
    return " ".join(["the"] * count)  # one token each in the tiny vocabulary


def length_cases(tokens: int) -> list[Case]:
    """Prompts whose expanded length (BOS, 'a man' with the class repeated, the filler, EOS)
    is 76, 77, 78 and 90 tokens: fitting, exactly full, and cut (end-of-text lost)."""
    fixed = 1 + 1 + tokens + 1  # BOS, "a", the repeated class word, EOS
    return [
        Case(f"a man img {filler(total - fixed)}", "lowres", 100 + total)
        for total in (76, 77, 78, 90)
    ]


def groups(version: int) -> list[Group]:
    per_photo = 1 if version == 1 else 2
    styled = [
        Case(*apply_style(style, "a man img reading in the library", "lowres"), seed=index)
        for index, style in enumerate(STYLES)
    ]
    last_place = 76 - 3 * per_photo  # the identity's last token lands on place 76
    return [
        Group("every style template, one batch", "img", "man", 2, styled),
        Group("near and past 77, one photo", "img", "man", 1, length_cases(1 * per_photo)),
        Group("near and past 77, four photos", "img", "man", 4, length_cases(4 * per_photo)),
        Group(
            "identity in the last place",
            "img",
            "man",
            3,
            [Case(f"{filler(last_place - 1)} man img walking in the city", "bad", 7)],
        ),
        Group(
            "custom trigger that is a word piece",
            "x",
            "woman",
            3,
            [Case("a photo of a woman x in the garden", "blurry", 11)],
        ),
        Group(
            "custom trigger that is a new word",
            "sks",
            "woman",
            1,
            [Case("a woman sks holding a book", "lowres", 12)],
        ),
        Group(
            "empty and None-like negatives",
            "img",
            "man",
            2,
            [
                Case("a man img at the window", "", 21),
                Case("a man img at the window", None, 22),
                Case("a man img at the window", " ", 23),
                Case(*apply_style("(No style)", "a man img on the street", ""), seed=24),
            ],
        ),
    ]


# ------------------------------------------------------------------ fixtures and the test


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def version(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture(scope="module")
def farm_pipeline(models_dir: Path, version: int) -> LoadedPreset:
    """A preset of its own: the triggers registered here must not leak into other tests."""
    return load_preset(get_preset("tiny-v1" if version == 1 else "tiny"), models_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(models_dir: Path, version: int, farm_pipeline: LoadedPreset) -> ReferencePhotoMaker:
    folder = models_dir / "tiny" / f"build-{TINY_BUILD}"
    return ReferencePhotoMaker(folder / "sdxl", folder / f"photomaker-v{version}.bin", version)


def identity_of(loaded: LoadedPreset, photos: int, seed: int) -> IdentityTokens:
    encoder = loaded.pipeline.id_encoder
    size = encoder.config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(photos, 3, size, size, generator=generator)
    faces = 3 * torch.randn(photos, encoder.config.face_embed_dim, generator=generator)
    with torch.no_grad():
        tokens = encoder.encode_images(pixels, faces if encoder.config.version == 2 else None)
    return IdentityTokens(tokens.float(), encoder.fingerprint, f"random-{photos}-{seed}")


def farm_run(
    loaded: LoadedPreset, group: Group, identity: IdentityTokens
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    pipeline = loaded.pipeline
    renders = [SceneRender(c.prompt, c.negative, c.seed) for c in group.cases]
    identities = {group.trigger: identity}
    class_words = {group.trigger: group.class_word}
    with torch.no_grad():
        embeds = pipeline.encode_batch(renders, identities, class_words)
    steps: list[StepState] = []
    pipeline(
        renders,
        identities,
        height=SIZE,
        width=SIZE,
        steps=STEPS,
        guidance=GUIDANCE,
        style_strength=STYLE_STRENGTH,
        class_words=class_words,
        callback=steps.append,
    )
    return vars(embeds), steps[-1].latents


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("index", range(len(groups(2))), ids=[g.name for g in groups(2)])
def test_the_farm_pipeline_matches_the_reference(farm_pipeline, reference, version, index):
    group = groups(version)[index]
    identity = identity_of(farm_pipeline, group.photos, seed=index)
    reference.register(group.trigger)
    farm_embeds, farm_latents = farm_run(farm_pipeline, group, identity)
    for row, case in enumerate(group.cases):
        expected = reference.embeds(case.prompt, case.negative, group.trigger, identity.tokens)
        for name, value in expected.items():
            diff = max_diff(farm_embeds[name][row], value)
            assert diff < EMBEDS_ATOL, f"{case.prompt!r}: {name} differs by {diff:.2e}"
        diff = max_diff(farm_latents[row], reference.final_latents(expected, case.seed))
        assert diff < LATENTS_ATOL, f"{case.prompt!r}: final latents differ by {diff:.2e}"


def test_the_comparison_sees_the_old_truncation(farm_pipeline, reference, version):
    """Keeping the end-of-text token (FARM_PROMPT_TRUNCATION=keep-end, the farm's old rule)
    is visibly not the reference past 77 tokens: the test above can fail."""
    per_photo = 1 if version == 1 else 2
    case = length_cases(2 * per_photo)[-1]  # 90 tokens
    identity = identity_of(farm_pipeline, 2, seed=99)
    reference.register("img")
    expected = reference.embeds(case.prompt, case.negative, "img", identity.tokens)
    pipeline = farm_pipeline.pipeline
    try:
        pipeline.prompt_truncation = "keep-end"
        with torch.no_grad():
            embeds, pooled = pipeline.encode_identity_prompt(case.prompt, {"img": identity})
    finally:
        pipeline.prompt_truncation = "reference"
    assert max_diff(pooled, expected["id_pooled"]) > 1e-2
    assert max_diff(embeds[:76], expected["id_prompt"][:76]) < EMBEDS_ATOL


def test_none_and_empty_negatives_differ_as_in_the_reference(reference):
    """The reference zeroes only None (force_zeros_for_empty_prompt) and encodes ""."""
    _, none, _, none_pooled = reference.sdxl.encode_prompt(
        prompt="a man", device=torch.device("cpu"), negative_prompt=None
    )
    _, empty, _, _ = reference.sdxl.encode_prompt(
        prompt="a man", device=torch.device("cpu"), negative_prompt=""
    )
    assert not none.any() and not none_pooled.any()
    assert empty.any()


def test_merge_step_formula_is_the_reference_demo_s():
    for ratio in (0, 15, 20, 33.3, 50, 100):
        for steps in (1, 4, 30, 50, 100):
            assert start_merge_step(ratio, steps) == start_merge_step_of_reference(ratio, steps)
