"""LoRA fusing: PhotoMaker's legacy layout and the diffusers/PEFT layout give W + scale*up@down."""

from __future__ import annotations

import pytest
import torch

from farm.errors import InputError
from farm.render.lora import fuse_unet_lora
from farm.render.tiny import _unet, tiny_lora

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return _unet().eval()


def weight(unet, path: str) -> torch.Tensor:
    return dict(unet.named_modules())[path].weight.detach().clone()


def test_legacy_photomaker_layout_is_fused_into_every_attention(unet):
    lora = tiny_lora(unet)
    before = {p: weight(unet, f"{LAYER}.{p}") for p in ("to_q", "to_out.0")}
    changed = fuse_unet_lora(unet, lora)
    assert changed == len(lora) // 2
    for proj, path in (("to_q", "to_q"), ("to_out", "to_out.0")):
        prefix = f"unet.{LAYER}.processor.{proj}_lora"
        delta = lora[f"{prefix}.up.weight"] @ lora[f"{prefix}.down.weight"]
        torch.testing.assert_close(weight(unet, f"{LAYER}.{path}"), before[path] + delta)


def test_peft_layout_with_alpha_scales_by_alpha_over_rank(unet):
    down, up = torch.randn(4, 64), torch.randn(64, 4)
    before = weight(unet, f"{LAYER}.to_k")
    state = {
        f"unet.{LAYER}.to_k.lora_A.weight": down,
        f"unet.{LAYER}.to_k.lora_B.weight": up,
        f"unet.{LAYER}.to_k.alpha": torch.tensor(2.0),
        "text_encoder.some.lora_A.weight": torch.randn(2, 2),  # ignored: not the UNet's
    }
    assert fuse_unet_lora(unet, state, scale=0.5) == 1
    torch.testing.assert_close(weight(unet, f"{LAYER}.to_k"), before + 0.5 * (2 / 4) * up @ down)


def test_fusing_changes_what_the_unet_computes(unet):
    sample = torch.randn(1, 4, 8, 8)
    kwargs = dict(
        encoder_hidden_states=torch.randn(1, 77, 64),
        added_cond_kwargs={"text_embeds": torch.randn(1, 32), "time_ids": torch.zeros(1, 6)},
    )
    with torch.no_grad():
        plain = unet(sample, 10, **kwargs).sample
        fuse_unet_lora(unet, tiny_lora(unet))
        fused = unet(sample, 10, **kwargs).sample
    assert not torch.allclose(plain, fused)


def test_weights_for_another_unet_are_refused(unet):
    with pytest.raises(InputError, match="does not match a layer"):
        fuse_unet_lora(
            unet,
            {
                "unet.mid_block.nope.processor.to_q_lora.down.weight": torch.zeros(1, 1),
                "unet.mid_block.nope.processor.to_q_lora.up.weight": torch.zeros(1, 1),
            },
        )
    with pytest.raises(InputError, match="no UNet LoRA"):
        fuse_unet_lora(unet, {})
