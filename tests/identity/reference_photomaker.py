"""TEST ORACLE: the reference PhotoMaker ID encoders, transcribed for comparison only.

Nothing in the farm imports this module. It is an independent transcription of TencentARC's
published model definitions, kept as close to the original as possible so that the farm's own
implementation (`farm/identity/encoders.py`) can be checked against it number for number:

- `photomaker/model.py` (V1): `MLP`, `FuseModule`, `PhotoMakerIDEncoder`
  (https://github.com/TencentARC/PhotoMaker/blob/main/photomaker/model.py, commit fb4d1b7)
- `photomaker/model_v2.py` (V2): `QFormerPerceiver`,
  `PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken` (same repository, commit 48ec26d); V2's `MLP`
  and `FuseModule` are identical to V1's
- `photomaker/resampler.py` (imported by model_v2 through the package): `FacePerceiverResampler`,
  `FeedForward`, `reshape_tensor`, `PerceiverAttention`, itself borrowed from IP-Adapter's
  `ip_adapter/resampler.py` (read here through a verbatim copy, shiimizu/ComfyUI-PhotoMaker-Plus
  `resampler.py`; vladmandic/automatic's transcription of model_v2 agrees).

Deliberate departures, all about *widths only*, so that a miniature of the same architecture can
be built in milliseconds: the vision config dict, the second projection width (1280), the fuse
width (2048), the face-embedding width (512), the resampler's `embedding_dim` (1024) and
`dim_head` (128, heads = dim // dim_head) are constructor arguments whose defaults are the
published values. The reference's debug `print` in `QFormerPerceiver.__init__` is dropped and the
einops imports (unused by these classes) are left out. Everything else (the forward signatures
with `class_tokens_mask`, the masked slicing and in-place `masked_scatter_`, the dim_head**-1/4
scaling of q and k, the fp32 softmax, the residuals) is the reference's, including its quirks:
`FuseModule.forward` writes into the caller's `prompt_embeds` (a `view`), so callers of the oracle
must pass a clone.
"""

import math

import torch
import torch.nn as nn
from transformers.models.clip.configuration_clip import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPVisionModelWithProjection

VISION_CONFIG_DICT = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}


# ---------------------------------------------------------------- photomaker/model.py (V1)


class MLP(nn.Module):
    def __init__(self, in_dim, out_dim, hidden_dim, use_residual=True):
        super().__init__()
        if use_residual:
            assert in_dim == out_dim
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.use_residual = use_residual
        self.act_fn = nn.GELU()

    def forward(self, x):
        residual = x
        x = self.layernorm(x)
        x = self.fc1(x)
        x = self.act_fn(x)
        x = self.fc2(x)
        if self.use_residual:
            x = x + residual
        return x


class FuseModule(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def fuse_fn(self, prompt_embeds, id_embeds):
        stacked_id_embeds = torch.cat([prompt_embeds, id_embeds], dim=-1)
        stacked_id_embeds = self.mlp1(stacked_id_embeds) + prompt_embeds
        stacked_id_embeds = self.mlp2(stacked_id_embeds)
        stacked_id_embeds = self.layer_norm(stacked_id_embeds)
        return stacked_id_embeds

    def forward(self, prompt_embeds, id_embeds, class_tokens_mask) -> torch.Tensor:
        # id_embeds shape: [b, max_num_inputs, 1, 2048]  ([b, max_num_inputs, 2, 2048] for V2)
        id_embeds = id_embeds.to(prompt_embeds.dtype)
        num_inputs = class_tokens_mask.sum().unsqueeze(0)  # TODO (reference): training case
        batch_size, max_num_inputs = id_embeds.shape[:2]
        # seq_length: 77
        seq_length = prompt_embeds.shape[1]
        # flat_id_embeds shape: [b*max_num_inputs, 1, 2048]
        flat_id_embeds = id_embeds.view(-1, id_embeds.shape[-2], id_embeds.shape[-1])
        # valid_id_mask [b*max_num_inputs]
        valid_id_mask = (
            torch.arange(max_num_inputs, device=flat_id_embeds.device)[None, :]
            < num_inputs[:, None]
        )
        valid_id_embeds = flat_id_embeds[valid_id_mask.flatten()]

        prompt_embeds = prompt_embeds.view(-1, prompt_embeds.shape[-1])
        class_tokens_mask = class_tokens_mask.view(-1)
        valid_id_embeds = valid_id_embeds.view(-1, valid_id_embeds.shape[-1])
        # slice out the image token embeddings
        image_token_embeds = prompt_embeds[class_tokens_mask]
        stacked_id_embeds = self.fuse_fn(image_token_embeds, valid_id_embeds)
        assert class_tokens_mask.sum() == stacked_id_embeds.shape[0], (
            f"{class_tokens_mask.sum()} != {stacked_id_embeds.shape[0]}"
        )
        prompt_embeds.masked_scatter_(
            class_tokens_mask[:, None], stacked_id_embeds.to(prompt_embeds.dtype)
        )
        updated_prompt_embeds = prompt_embeds.view(batch_size, seq_length, -1)
        return updated_prompt_embeds


class PhotoMakerIDEncoder(CLIPVisionModelWithProjection):
    def __init__(self, vision_config=None, projection_dim_2=1280, embed_dim=2048):
        vision_config = VISION_CONFIG_DICT if vision_config is None else vision_config
        super().__init__(CLIPVisionConfig(**vision_config))
        hidden = vision_config["hidden_size"]
        self.visual_projection_2 = nn.Linear(hidden, projection_dim_2, bias=False)
        self.fuse_module = FuseModule(embed_dim)

    def forward(self, id_pixel_values, prompt_embeds, class_tokens_mask):
        b, num_inputs, c, h, w = id_pixel_values.shape
        id_pixel_values = id_pixel_values.view(b * num_inputs, c, h, w)

        shared_id_embeds = self.vision_model(id_pixel_values)[1]
        id_embeds = self.visual_projection(shared_id_embeds)
        id_embeds_2 = self.visual_projection_2(shared_id_embeds)

        id_embeds = id_embeds.view(b, num_inputs, 1, -1)
        id_embeds_2 = id_embeds_2.view(b, num_inputs, 1, -1)

        id_embeds = torch.cat((id_embeds, id_embeds_2), dim=-1)
        updated_prompt_embeds = self.fuse_module(prompt_embeds, id_embeds, class_tokens_mask)

        return updated_prompt_embeds


# ---------------------------------------------------------------- photomaker/resampler.py


class FacePerceiverResampler(torch.nn.Module):
    def __init__(
        self,
        *,
        dim=768,
        depth=4,
        dim_head=64,
        heads=16,
        embedding_dim=1280,
        output_dim=768,
        ff_mult=4,
    ):
        super().__init__()
        self.proj_in = torch.nn.Linear(embedding_dim, dim)
        self.proj_out = torch.nn.Linear(dim, output_dim)
        self.norm_out = torch.nn.LayerNorm(output_dim)
        self.layers = torch.nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                torch.nn.ModuleList(
                    [
                        PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                        FeedForward(dim=dim, mult=ff_mult),
                    ]
                )
            )

    def forward(self, latents, x):
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        latents = self.proj_out(latents)
        return self.norm_out(latents)


# FFN
def FeedForward(dim, mult=4):
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


def reshape_tensor(x, heads):
    bs, length, _width = x.shape
    # (bs, length, width) --> (bs, length, n_heads, dim_per_head)
    x = x.view(bs, length, heads, -1)
    # (bs, length, n_heads, dim_per_head) --> (bs, n_heads, length, dim_per_head)
    x = x.transpose(1, 2)
    # (bs, n_heads, length, dim_per_head) --> (bs*n_heads, length, dim_per_head)
    x = x.reshape(bs, heads, length, -1)
    return x


class PerceiverAttention(nn.Module):
    def __init__(self, *, dim, dim_head=64, heads=8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads

        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x, latents):
        """
        Args:
            x (torch.Tensor): image features
                shape (b, n1, D)
            latent (torch.Tensor): latent features
                shape (b, n2, D)
        """
        x = self.norm1(x)
        latents = self.norm2(latents)

        b, l, _ = latents.shape  # noqa: E741 (reference name)

        q = self.to_q(latents)
        kv_input = torch.cat((x, latents), dim=-2)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)

        q = reshape_tensor(q, self.heads)
        k = reshape_tensor(k, self.heads)
        v = reshape_tensor(v, self.heads)

        # attention
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)  # More stable with f16 than dividing
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = weight @ v

        out = out.permute(0, 2, 1, 3).reshape(b, l, -1)

        return self.to_out(out)


# ---------------------------------------------------------------- photomaker/model_v2.py (V2)


class QFormerPerceiver(nn.Module):
    def __init__(
        self,
        id_embeddings_dim,
        cross_attention_dim,
        num_tokens,
        embedding_dim=1024,
        use_residual=True,
        ratio=4,
        dim_head=128,
    ):
        super().__init__()

        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.use_residual = use_residual
        self.token_proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, id_embeddings_dim * ratio),
            nn.GELU(),
            nn.Linear(id_embeddings_dim * ratio, cross_attention_dim * num_tokens),
        )
        self.token_norm = nn.LayerNorm(cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=cross_attention_dim,
            depth=4,
            dim_head=dim_head,
            heads=cross_attention_dim // dim_head,
            embedding_dim=embedding_dim,
            output_dim=cross_attention_dim,
            ff_mult=4,
        )

    def forward(self, x, last_hidden_state):
        x = self.token_proj(x)
        x = x.reshape(-1, self.num_tokens, self.cross_attention_dim)
        x = self.token_norm(x)  # cls token
        out = self.perceiver_resampler(x, last_hidden_state)  # retrieve from patch tokens
        if self.use_residual:  # TODO (reference): if use_residual is not true
            out = x + 1.0 * out
        return out


class PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken(CLIPVisionModelWithProjection):
    def __init__(
        self,
        id_embeddings_dim=512,
        vision_config=None,
        projection_dim_2=1280,
        cross_attention_dim=2048,
        dim_head=128,
    ):
        vision_config = VISION_CONFIG_DICT if vision_config is None else vision_config
        super().__init__(CLIPVisionConfig(**vision_config))
        hidden = vision_config["hidden_size"]
        self.fuse_module = FuseModule(cross_attention_dim)
        self.visual_projection_2 = nn.Linear(hidden, projection_dim_2, bias=False)

        # projection
        self.num_tokens = 2
        self.cross_attention_dim = cross_attention_dim
        self.qformer_perceiver = QFormerPerceiver(
            id_embeddings_dim,
            cross_attention_dim,
            self.num_tokens,
            embedding_dim=hidden,
            dim_head=dim_head,
        )

    def forward(self, id_pixel_values, prompt_embeds, class_tokens_mask, id_embeds):
        b, num_inputs, c, h, w = id_pixel_values.shape
        id_pixel_values = id_pixel_values.view(b * num_inputs, c, h, w)

        last_hidden_state = self.vision_model(id_pixel_values)[0]
        id_embeds = id_embeds.view(b * num_inputs, -1)

        id_embeds = self.qformer_perceiver(id_embeds, last_hidden_state)
        id_embeds = id_embeds.view(b, num_inputs, self.num_tokens, -1)
        updated_prompt_embeds = self.fuse_module(prompt_embeds, id_embeds, class_tokens_mask)

        return updated_prompt_embeds
