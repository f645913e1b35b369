"""LoRA fusing: PhotoMaker's legacy layout, diffusers', PEFT's and kohya's each give
W + weight * alpha/rank * up @ down, and a key the loader does not know is refused by name."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from farm.errors import InputError
from farm.render.lora import fuse_unet_lora, read_lora_file
from farm.render.tiny import _unet, tiny_fast_lora, tiny_lora

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


# --- kohya's layout: LCM-LoRA, Hyper-SD and SDXL-Lightning ship in it ---------------------

CONV = "down_blocks.0.resnets.0.conv1"


def kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def test_kohya_layout_changes_each_layer_by_weight_times_alpha_over_rank(unet):
    linear, conv = f"{LAYER}.to_k", CONV
    before = {p: weight(unet, p) for p in (linear, conv)}
    down, up = torch.randn(8, 64), torch.randn(64, 8)
    conv_down, conv_up = torch.randn(8, 32, 3, 3), torch.randn(32, 8, 1, 1)
    state = {
        f"{kohya(linear)}.lora_down.weight": down.half(),
        f"{kohya(linear)}.lora_up.weight": up.half(),
        f"{kohya(linear)}.alpha": torch.tensor(4.0),
        f"{kohya(conv)}.lora_down.weight": conv_down,
        f"{kohya(conv)}.lora_up.weight": conv_up,
        f"{kohya(conv)}.alpha": torch.tensor(2.0),
    }
    untouched = weight(unet, "conv_in")
    assert fuse_unet_lora(unet, state, scale=0.7) == 2
    linear_delta = 0.7 * (4 / 8) * up.half().float() @ down.half().float()
    torch.testing.assert_close(weight(unet, linear), before[linear] + linear_delta)
    conv_delta = (0.7 * (2 / 8) * conv_up.flatten(1) @ conv_down.flatten(1)).reshape(32, 32, 3, 3)
    torch.testing.assert_close(weight(unet, conv), before[conv] + conv_delta)
    assert torch.equal(weight(unet, "conv_in"), untouched)


def test_the_tiny_fast_lora_covers_every_linear_and_convolution(unet):
    layers = [m for m in unet.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    assert fuse_unet_lora(unet, tiny_fast_lora(unet)) == len(layers)


def test_diffusers_layout_from_a_safetensors_file(unet, tmp_path):
    down, up = torch.randn(2, 64), torch.randn(64, 2)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(
        {f"unet.{LAYER}.to_v.lora.down.weight": down, f"unet.{LAYER}.to_v.lora.up.weight": up},
        path,
    )
    before = weight(unet, f"{LAYER}.to_v")
    assert fuse_unet_lora(unet, read_lora_file(path)) == 1
    torch.testing.assert_close(weight(unet, f"{LAYER}.to_v"), before + up @ down)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"lora_unet_down_blocks_9_nope.lora_down.weight": torch.zeros(1, 1)}, "names no layer"),
        # kohya's own SDXL names (sd-scripts): not this UNet's.
        (
            {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha": torch.ones(())},
            "names no layer",
        ),
        ({f"{kohya(CONV)}.hada_w1_a": torch.zeros(1, 1)}, "names no layer"),  # LyCORIS LoHa
        ({f"unet.{CONV}.lora_magnitude_vector": torch.zeros(1)}, "not a LoRA down, up or alpha"),
        ({f"{kohya(CONV)}.lora_down.weight": torch.zeros(1, 32, 3, 3)}, "lacks its down or up"),
        (
            {
                f"{kohya(CONV)}.lora_down.weight": torch.zeros(1, 64, 3, 3),
                f"{kohya(CONV)}.lora_up.weight": torch.zeros(32, 1, 1, 1),
            },
            "trained for another model",
        ),
    ],
    ids=["unknown-layer", "sgm-names", "lycoris", "dora", "half-a-pair", "wrong-shape"],
)
def test_keys_the_loader_does_not_know_are_refused_by_name(unet, state, message):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(InputError, match=message):
        fuse_unet_lora(unet, state)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_text_encoder_weights_are_skipped_with_a_warning(unet, caplog):
    state = {
        f"{kohya(CONV)}.lora_down.weight": torch.zeros(1, 32, 3, 3),
        f"{kohya(CONV)}.lora_up.weight": torch.zeros(32, 1, 1, 1),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(1, 1),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha": torch.ones(()),
    }
    with caplog.at_level(logging.WARNING, logger="farm.render.lora"):
        assert fuse_unet_lora(unet, state) == 1
    assert "2 text-encoder weights skipped" in caplog.text


def test_only_safetensors_files_are_read(tmp_path):
    with pytest.raises(InputError, match=r"read as \.safetensors only"):
        read_lora_file(tmp_path / "lora.bin")
