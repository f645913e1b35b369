"""Reading and writing PhotoMaker checkpoints in the official formats.

The published files are a torch pickle `{"id_encoder": state_dict, "lora_weights": state_dict}`
(`photomaker-v1.bin`, `photomaker-v2.bin`); a safetensors variant with `id_encoder.` /
`lora_weights.` key prefixes circulates too. Neither carries a config, so the encoder's shapes
are read off the tensors; the tiny preset is saved through `save_checkpoint` and loaded back
through the same code as the real weights.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from farm.errors import InputError
from farm.identity.encoders import IDEncoder, IDEncoderConfig, build_id_encoder

# Buffers that older transformers saved and newer ones rebuild: dropping them keeps strict
# loading strict about everything that matters.
_STALE_KEYS = ("vision_model.embeddings.position_ids",)
_VISION_HEAD_DIM = 64  # CLIP ViTs use 64-wide heads; the checkpoint does not record heads.


@dataclass(frozen=True)
class PhotoMakerCheckpoint:
    id_encoder: dict[str, torch.Tensor]
    lora_weights: dict[str, torch.Tensor]
    fingerprint: str


def file_fingerprint(path: Path) -> str:
    """sha256 of the file's bytes: cached identity tokens are valid for exactly these weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> PhotoMakerCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PhotoMaker checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        flat = load_file(path)
        parts: dict[str, dict[str, torch.Tensor]] = {"id_encoder": {}, "lora_weights": {}}
        for key, tensor in flat.items():
            head, _, rest = key.partition(".")
            if head not in parts:
                raise InputError(
                    f"{path}: unexpected key {key!r} (want id_encoder.* or lora_weights.*)"
                )
            parts[head][rest] = tensor
    else:
        parts = _load_pickle(path)
        if not isinstance(parts, dict) or set(parts) != {"id_encoder", "lora_weights"}:
            found = sorted(parts) if isinstance(parts, dict) else type(parts).__name__
            raise InputError(
                f"{path}: not a PhotoMaker checkpoint (want keys id_encoder, lora_weights; "
                f"found {found})"
            )
    encoder = {k: v for k, v in parts["id_encoder"].items() if k not in _STALE_KEYS}
    return PhotoMakerCheckpoint(encoder, dict(parts["lora_weights"]), file_fingerprint(path))


def _load_pickle(path: Path) -> object:
    # weights_only: a checkpoint is data, never code to run. mmap avoids a second copy of
    # 2 GB in memory; files in torch's legacy (pre-zip) format cannot be mapped.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks sit under `prefix`; a gap means a damaged file."""
    found = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise InputError(f"damaged checkpoint: the blocks under {prefix!r} are {sorted(found)}")
    return len(found)


def infer_config(
    state_dict: dict[str, torch.Tensor], version: int | None = None
) -> IDEncoderConfig:
    """The encoder's shapes, read off its weights (the official files carry no config)."""
    has_v2 = any(k.startswith("qformer_perceiver.") for k in state_dict)
    if version is None:
        version = 2 if has_v2 else 1
    if version == 1 and has_v2:
        raise InputError(
            "this checkpoint is PhotoMaker V2 (it has qformer_perceiver weights), not V1"
        )
    if version == 2 and not has_v2:
        raise InputError("this checkpoint is PhotoMaker V1 (no qformer_perceiver weights), not V2")
    resampler = "qformer_perceiver.perceiver_resampler.layers."
    try:
        patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
        positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0]
        fc1 = state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"]
        proj = state_dict["visual_projection.weight"]
        proj2 = state_dict["visual_projection_2.weight"]
        if version == 2:
            first = state_dict["qformer_perceiver.token_proj.0.weight"]
            last = state_dict["qformer_perceiver.token_proj.2.weight"]
            ff = state_dict[f"{resampler}0.1.1.weight"]
    except KeyError as missing:
        raise InputError(f"not a PhotoMaker ID encoder: missing weight {missing}") from None
    hidden = patch.shape[0]
    fields: dict[str, int] = dict(
        version=version,
        vision_hidden=hidden,
        vision_intermediate=fc1.shape[0],
        vision_layers=_count_blocks(state_dict, "vision_model.encoder.layers."),
        vision_heads=max(1, hidden // _VISION_HEAD_DIM),
        patch_size=patch.shape[-1],
        image_size=math.isqrt(positions - 1) * patch.shape[-1],
        projection_dim=proj.shape[0],
        projection_dim_2=proj2.shape[0],
    )
    if version == 2:
        dim = proj.shape[0] + proj2.shape[0]
        fields.update(
            face_embed_dim=first.shape[1],
            token_proj_ratio=first.shape[0] // first.shape[1],
            tokens_per_image=last.shape[0] // dim,
            perceiver_depth=_count_blocks(state_dict, resampler),
            perceiver_dim_head=perceiver_dim_head(dim),
            perceiver_ff_mult=ff.shape[0] // dim,
        )
    config = IDEncoderConfig(**fields)
    published = IDEncoderConfig(version=version)
    if config.embed_dim == published.embed_dim and config != published:
        # At the published widths only the published architecture exists: fewer layers means
        # a truncated or damaged download, not another model.
        raise InputError(
            f"incomplete PhotoMaker V{version} checkpoint: its shapes {config.to_dict()} differ "
            f"from the published ones {published.to_dict()}; download the file again"
        )
    return config


def perceiver_dim_head(dim: int) -> int:
    """The published V2 uses 128-wide heads (16 at width 2048); tiny widths use two heads."""
    return 128 if dim >= 256 else dim // 2


def load_id_encoder(
    path: str | os.PathLike[str],
    version: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> IDEncoder:
    """The ID encoder of a PhotoMaker checkpoint, loaded strictly, in eval mode.

    `version` (1 or 2) is checked against the weights; None reads it off them.
    """
    checkpoint = read_checkpoint(path)
    return encoder_from_checkpoint(checkpoint, version, dtype=dtype, device=device)


def encoder_from_checkpoint(
    checkpoint: PhotoMakerCheckpoint,
    version: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> IDEncoder:
    config = infer_config(checkpoint.id_encoder, version)
    # Built on the meta device: random initialisation of 500 M parameters would cost seconds
    # only to be overwritten.
    with torch.device("meta"):
        encoder = build_id_encoder(config)
    encoder = encoder.to_empty(device=device)
    try:
        encoder.load_state_dict(checkpoint.id_encoder, strict=True)
    except RuntimeError as error:
        raise InputError(f"not a PhotoMaker V{config.version} ID encoder: {error}") from None
    embeddings = encoder.vision_model.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device)[None]
    # Storages may be bf16 on disk; the module runs in the dtype asked for.
    encoder = encoder.to(dtype=dtype).eval().requires_grad_(False)
    encoder.fingerprint = checkpoint.fingerprint
    return encoder


def save_checkpoint(
    path: str | os.PathLike[str],
    encoder: IDEncoder,
    lora_weights: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an official-format checkpoint: `.safetensors` with prefixes, anything else pickled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}

    state = cast(encoder.state_dict())
    lora = cast(lora_weights)
    if path.suffix == ".safetensors":
        flat = {f"id_encoder.{k}": v for k, v in state.items()}
        flat.update({f"lora_weights.{k}": v for k, v in lora.items()})
        save_file(flat, path)
    else:
        torch.save({"id_encoder": state, "lora_weights": lora}, path)
    return path
