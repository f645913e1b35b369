"""PhotoMaker's ID encoders, V1 and V2, with their config, written to load the official weights.

Both encoders turn reference photos into prompt-independent *ID tokens* (`encode_images`) and
fuse one ID token into the contextual text embedding of one class-word position (`fuse`). The
split matters for the farm: ID tokens are computed once per character and cached, and only the
cheap fuse runs per prompt. Module and parameter names follow the official state dict
(`vision_model.*`, `visual_projection{,_2}`, `fuse_module.*`, `qformer_perceiver.*`) so that
`load_state_dict(strict=True)` accepts the published checkpoints as they are.

The widths are parameters so that the `tiny` preset can build the same architecture in miniature.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


@dataclass(frozen=True)
class IDEncoderConfig:
    """Shapes of an ID encoder. The defaults are the published PhotoMaker V1/V2 widths."""

    version: int = 2
    vision_hidden: int = 1024
    vision_intermediate: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    # The two projections match SDXL's two text encoders (CLIP-L 768 + OpenCLIP-bigG 1280);
    # their sum is the width of the fused text embedding.
    projection_dim: int = 768
    projection_dim_2: int = 1280
    # V2 only: the face-recognition embedding and the Q-Former perceiver over the CLIP tokens.
    face_embed_dim: int = 512
    tokens_per_image: int = 2
    token_proj_ratio: int = 4
    perceiver_depth: int = 4
    perceiver_dim_head: int = 128
    perceiver_ff_mult: int = 4

    @property
    def embed_dim(self) -> int:
        return self.projection_dim + self.projection_dim_2

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"PhotoMaker version must be 1 or 2, got {self.version}")
        if self.version == 1 and self.tokens_per_image != 1:
            object.__setattr__(self, "tokens_per_image", 1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class MLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally residual: the fuse module's block."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool) -> None:
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    """Fuses a class-word text embedding with one ID token: LN(mlp2(mlp1([c, e]) + c))."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, class_embeds: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
        stacked = self.mlp1(torch.cat([class_embeds, id_tokens], dim=-1)) + class_embeds
        return self.layer_norm(self.mlp2(stacked))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0..3 are part of the official key names (`layers.i.1.{0,1,3}.weight`).
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to the image tokens and to themselves (IP-Adapter FaceID's resampler)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, image_tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        image_tokens = self.norm1(image_tokens)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([image_tokens, latents], dim=-2)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        # Scaling q and k each by dim_head**-0.25 (not q by **-0.5) keeps half precision from
        # overflowing; the softmax runs in fp32 for the same reason. Both are the reference's.
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FacePerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, embedding_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim, dim_head, dim // dim_head), _feed_forward(dim, ff_mult)]
            )
            for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        image_tokens = self.proj_in(image_tokens)
        for attn, ff in self.layers:
            latents = attn(image_tokens, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    """Face embedding -> `tokens_per_image` latents, refined by a resampler over CLIP tokens."""

    def __init__(self, config: IDEncoderConfig) -> None:
        super().__init__()
        dim, face = config.embed_dim, config.face_embed_dim
        self.num_tokens = config.tokens_per_image
        self.token_proj = nn.Sequential(
            nn.Linear(face, face * config.token_proj_ratio),
            nn.GELU(),
            nn.Linear(face * config.token_proj_ratio, dim * self.num_tokens),
        )
        self.token_norm = nn.LayerNorm(dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=dim,
            depth=config.perceiver_depth,
            dim_head=config.perceiver_dim_head,
            embedding_dim=config.vision_hidden,
            ff_mult=config.perceiver_ff_mult,
        )

    def forward(self, face_embeds: torch.Tensor, clip_tokens: torch.Tensor) -> torch.Tensor:
        latents = self.token_proj(face_embeds).reshape(face_embeds.shape[0], self.num_tokens, -1)
        latents = self.token_norm(latents)
        return latents + self.perceiver_resampler(latents, clip_tokens)


class IDEncoder(nn.Module):
    """The parts V1 and V2 share: the CLIP vision tower, both projections and the fuse module.

    V2 keeps the projections although its forward does not use them, so that the official V2
    state dict loads strictly.
    """

    def __init__(self, config: IDEncoderConfig) -> None:
        super().__init__()
        self.config = config
        # Which weights these are (sha256 of the checkpoint): part of every identity cache key.
        self.fingerprint = ""
        vision = CLIPVisionConfig(
            hidden_size=config.vision_hidden,
            intermediate_size=config.vision_intermediate,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            patch_size=config.patch_size,
            image_size=config.image_size,
            projection_dim=config.projection_dim,
            hidden_act="quick_gelu",
        )
        vision._attn_implementation = "sdpa"
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(config.vision_hidden, config.projection_dim, bias=False)
        self.visual_projection_2 = nn.Linear(
            config.vision_hidden, config.projection_dim_2, bias=False
        )
        self.fuse_module = FuseModule(config.embed_dim)

    @property
    def version(self) -> int:
        return self.config.version

    @property
    def tokens_per_image(self) -> int:
        return self.config.tokens_per_image

    @property
    def dtype(self) -> torch.dtype:
        return self.fuse_module.layer_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fuse_module.layer_norm.weight.device

    def encode_images(
        self, pixel_values: torch.Tensor, face_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ID tokens `[N, T, D]` of N CLIP-normalised photos `[N, 3, 224, 224]`."""
        raise NotImplementedError

    def fuse(self, class_embeds: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
        """Fused embeddings `[M, D]` for M class-word positions and their M ID tokens."""
        if class_embeds.shape != id_tokens.shape or class_embeds.shape[-1] != self.config.embed_dim:
            raise ValueError(
                f"fuse needs two [M, {self.config.embed_dim}] tensors, got "
                f"{tuple(class_embeds.shape)} and {tuple(id_tokens.shape)}"
            )
        return self.fuse_module(class_embeds.to(self.dtype), id_tokens.to(self.dtype))

    def _check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixel_values must be [N, 3, {size}, {size}], got {pixel_values.shape}"
            )
        return pixel_values.to(device=self.device, dtype=self.dtype)


class IDEncoderV1(IDEncoder):
    """One ID token per photo: the pooled CLS through both projections, concatenated."""

    def encode_images(
        self, pixel_values: torch.Tensor, face_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=self._check_pixels(pixel_values)).pooler_output
        tokens = torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], -1)
        return tokens.unsqueeze(1)


class IDEncoderV2(IDEncoder):
    """Two ID tokens per photo: the face embedding's latents, refined over all CLIP tokens."""

    def __init__(self, config: IDEncoderConfig) -> None:
        super().__init__(config)
        self.qformer_perceiver = QFormerPerceiver(config)

    def encode_images(
        self, pixel_values: torch.Tensor, face_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        pixel_values = self._check_pixels(pixel_values)
        n = pixel_values.shape[0]
        want = (n, self.config.face_embed_dim)
        if face_embeds is None or tuple(face_embeds.shape) != want:
            got = None if face_embeds is None else tuple(face_embeds.shape)
            raise ValueError(f"PhotoMaker V2 needs face_embeds of shape {want}, got {got}")
        clip_tokens = self.vision_model(pixel_values=pixel_values).last_hidden_state
        return self.qformer_perceiver(face_embeds.to(clip_tokens), clip_tokens)


def build_id_encoder(config: IDEncoderConfig) -> IDEncoder:
    return (IDEncoderV1 if config.version == 1 else IDEncoderV2)(config)
