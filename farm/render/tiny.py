"""The `tiny` preset: a complete SDXL + PhotoMaker stack with small seeded random weights.

It exists so that tests, CI and smoke runs exercise every line a real model does, on a CPU, with
no download: it is built here, written to disk in the official formats (a diffusers SDXL folder,
a `photomaker-v{1,2}.bin`, and the `tiny-fast` preset's few-step LoRA in kohya's layout), and
loaded back through the same loaders as the real presets.
Its pictures are noise. Building is deterministic, so two machines get identical weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from farm.identity.checkpoint import perceiver_dim_head, save_checkpoint
from farm.identity.encoders import IDEncoderConfig, build_id_encoder
from farm.render.lora import KOHYA_PREFIX
from farm.render.tiny_build import TINY_BUILD

TEXT_WIDTH = 32  # each text encoder; fused width = 2 x 32
# Words that should be one token each (as in CLIP's real vocabulary), so that class words are
# single tokens and prompts stay short; everything else falls back to byte-level pieces.
_VOCABULARY = """
a an the of in on at and with to from by his her their is under over into up down
man woman girl boy person child lady gentleman old young
photo photograph portrait picture close reading writing walking sitting standing holding looking
library garden apple tree window night day light dark book letter desk candle street city river sky
room table glass wooden large small late afternoon morning evening
comic style cinematic film painting drawing art digital anime graphic novel illustration
detailed highly professional vibrant bokeh realistic quality sharp focus lowres blurry bad
"""
_WORDS = tuple(_VOCABULARY.split())


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character map, so every input byte has a token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_tokenizer(pad_token: str) -> CLIPTokenizer:
    """A CLIP BPE tokenizer built in memory: the byte alphabet plus whole-word merges."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    # Every merge joins a character to a word-final suffix (right to left), so the merges of
    # all words form one suffix tree and BPE turns each listed word into exactly one token.
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        suffix = word[-1] + "</w>"
        for char in reversed(word[:-1]):
            if (char, suffix) not in merges:
                merges.append((char, suffix))
            suffix = char + suffix
            vocab.setdefault(suffix, len(vocab))
    # Specials last, as in CLIP: end-of-text must be the largest id, because SDXL's second
    # encoder finds it with argmax(input_ids) for the pooled embedding.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token=pad_token,
        model_max_length=77,
    )


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=2,  # SDXL's legacy value: the pooled output is read at argmax(input_ids)
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + pooled 32
        cross_attention_dim=2 * TEXT_WIDTH,
        norm_num_groups=1,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=1,
        sample_size=64,
        scaling_factor=0.13025,  # SDXL's
    )


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL's Euler configuration, as the reference demo uses it."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def tiny_lora(unet: UNet2DConditionModel, rank: int = 4, seed: int = 3) -> dict[str, torch.Tensor]:
    """A LoRA over every attention of the UNet, in PhotoMaker's legacy attn-processor layout."""
    generator = torch.Generator().manual_seed(seed)
    lora: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith((".attn1", ".attn2")):
            continue
        for proj, layer in (
            ("to_q", module.to_q),
            ("to_k", module.to_k),
            ("to_v", module.to_v),
            ("to_out", module.to_out[0]),
        ):
            prefix = f"unet.{name}.processor.{proj}_lora"
            down = torch.randn(rank, layer.in_features, generator=generator) * 0.1
            up = torch.randn(layer.out_features, rank, generator=generator) * 0.1
            lora[f"{prefix}.down.weight"] = down
            lora[f"{prefix}.up.weight"] = up
    return lora


def tiny_fast_lora(
    unet: UNet2DConditionModel, rank: int = 4, alpha: float = 2.0, seed: int = 5
) -> dict[str, torch.Tensor]:
    """A few-step LoRA's stand-in: every linear and convolution of the UNet, as LCM-LoRA,
    Hyper-SD and SDXL-Lightning cover it, in their kohya layout and fp16 storage:
    `lora_unet_<path with _>.lora_down.weight`, `.lora_up.weight` and `.alpha`."""
    generator = torch.Generator().manual_seed(seed)
    lora: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, nn.Conv2d):
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        else:
            continue
        key = KOHYA_PREFIX + name.replace(".", "_")
        lora[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.05
        lora[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.05
        lora[f"{key}.alpha"] = torch.tensor(alpha)
    return {key: value.half() for key, value in lora.items()}


def tiny_id_encoder_config(version: int) -> IDEncoderConfig:
    return IDEncoderConfig(
        version=version,
        vision_hidden=128,
        vision_intermediate=256,
        vision_layers=2,
        vision_heads=2,
        projection_dim=TEXT_WIDTH,
        projection_dim_2=TEXT_WIDTH,
        face_embed_dim=128,  # dlib's descriptor: the face model that runs on any machine
        perceiver_depth=2,
        perceiver_dim_head=perceiver_dim_head(2 * TEXT_WIDTH),
    )


def build_tiny(target: Path, seed: int = 0) -> Path:
    """Write the tiny SDXL folder and both PhotoMaker checkpoints under `target`."""
    torch.manual_seed(seed)
    sdxl = target / "sdxl"
    tokenizer = tiny_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with '!'
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2))
    unet, vae = _unet(), _vae()
    # Saved as a whole pipeline, so that model_index.json names every component and diffusers'
    # own `StableDiffusionXLPipeline.from_pretrained` loads the folder, as it loads RealVisXL.
    StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
    ).save_pretrained(sdxl)
    lora = tiny_lora(unet)
    for version in (1, 2):
        encoder = build_id_encoder(tiny_id_encoder_config(version))
        save_checkpoint(target / f"photomaker-v{version}.bin", encoder, lora)
    # The names the tiny presets look for (checkpoint_file, tiny-fast's TINY_FAST_LORA) are spelt
    # here, not imported: presets.locate builds through this module, so that would be a circle.
    save_file(tiny_fast_lora(unet), target / "tiny-fast-lora.safetensors")
    return target


def ensure_tiny(models_dir: Path) -> Path:
    """The tiny model folder under `models_dir`, built once; concurrent callers never see a
    half-written folder (it is built aside and renamed into place)."""
    final = models_dir / "tiny" / f"build-{TINY_BUILD}"
    if (final / "photomaker-v2.bin").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=".building-"))
    try:
        build_tiny(scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / "photomaker-v2.bin").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
