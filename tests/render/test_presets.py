"""The real presets (`photomaker-v1`, `photomaker-v2`, the fast ones) on files in the official
formats.

Their weights are gigabytes and cannot be fetched here, so the tests write miniature files in
exactly the layouts the presets read (a diffusers SDXL folder, PhotoMaker checkpoints, an
insightface pack, the Hugging Face cache) and load and render them through the real loaders:
what would break on a worker with the real files breaks here too. Every test runs with an
empty, offline Hugging Face cache of its own, so none can see this machine's cache or the
network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors.torch import load_file

from farm.errors import InputError, ModelNotFoundError
from farm.identity.checkpoint import save_checkpoint
from farm.identity.encoders import build_id_encoder
from farm.identity.engine import Photo
from farm.identity.tokens import IdentityTokens
from farm.render.loading import LoadedPreset, load_preset
from farm.render.pipeline import SceneRender
from farm.render.presets import PRESETS, TINY_FAST_LORA, ModelFiles, get_preset, locate
from farm.render.tiny import build_tiny, tiny_id_encoder_config, tiny_lora
from tests.fixtures.insightface_pack import EMBEDDING_DIM, write_fake_pack
from tests.fixtures.tiny import photos_of

REALVIS = "SG161222/RealVisXL_V4.0"
CHECKPOINT_REPOS = {
    "photomaker-v1": "TencentARC/PhotoMaker",
    "photomaker-v2": "TencentARC/PhotoMaker-V2",
}
# V2 takes insightface's 512-d ArcFace embedding, not the tiny preset's 128-d dlib one.
V2_CONFIG = dataclasses.replace(tiny_id_encoder_config(2), face_embed_dim=EMBEDDING_DIM)
# A cross-attention projection that PhotoMaker's LoRA changes.
LORA_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"

# insightface's own alignment code calls a scikit-image API that is being deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@pytest.fixture(autouse=True)
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline, in place of this machine's."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variables once, when imported: what it read is patched too.
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL folder (`sdxl/`) and its checkpoints, built once for the module."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def base_unet(tiny_build: Path) -> UNet2DConditionModel:
    """The SDXL folder's UNet as stored, before any LoRA: what the loaded one is compared to."""
    return UNet2DConditionModel.from_pretrained(tiny_build / "sdxl", subfolder="unet")


@pytest.fixture(scope="module")
def v2_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, base_unet: UNet2DConditionModel
) -> Path:
    """A V2 checkpoint for a 512-d face model, written once: the tiny build's is for dlib."""
    folder = tmp_path_factory.mktemp("v2")
    return save_checkpoint(
        folder / "photomaker-v2.bin", build_id_encoder(V2_CONFIG), tiny_lora(base_unet)
    )


def files_under(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay `files` out as huggingface_hub stores a download of `repo_id` and return the
    snapshot folder: the bytes under blobs/, a snapshot of relative links to them, and
    refs/main naming the snapshot's commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def farm_models_dir(root: Path, tiny_build: Path) -> Path:
    """A FARM_MODELS_DIR with the tiny SDXL where the real base goes, and no checkpoint yet."""
    models = root / "models"
    shutil.copytree(tiny_build / "sdxl", models / "RealVisXL_V4.0")
    return models


def lora_in_file(path: Path) -> dict[str, torch.Tensor]:
    """The LoRA weights as stored, read without the farm's reader that is under test."""
    if path.suffix == ".safetensors":
        prefix = "lora_weights."
        stored = load_file(path)
        return {k.removeprefix(prefix): v for k, v in stored.items() if k.startswith(prefix)}
    return torch.load(path, weights_only=True)["lora_weights"]


def assert_lora_fused(loaded: LoadedPreset, base_unet: UNet2DConditionModel, path: Path) -> None:
    """The loaded UNet is the stored one plus up @ down of the checkpoint's LoRA."""
    lora = lora_in_file(path)
    block, projection = LORA_LAYER.rsplit(".", 1)
    prefix = f"unet.{block}.processor.{projection}_lora"
    delta = lora[f"{prefix}.up.weight"].float() @ lora[f"{prefix}.down.weight"].float()
    # Loading fuses the cross-attention's key and value projections: the key's rows come first.
    fused = loaded.pipeline.unet.get_submodule(block).to_kv.weight
    base_weight = base_unet.get_submodule(LORA_LAYER).weight
    loaded_weight = fused[: base_weight.shape[0]]
    torch.testing.assert_close(loaded_weight - base_weight, delta, atol=1e-5, rtol=0)


def render_one(loaded: LoadedPreset, identity: IdentityTokens) -> None:
    # Two steps at the default style strength: the second one runs with the identity fused.
    result = loaded.pipeline(
        [SceneRender("a man img reading", "lowres", 1)],
        {"img": identity},
        steps=2,
        height=64,
        width=64,
    )
    assert [image.size for image in result.images] == [(64, 64)]


def gradient_photo(name: str) -> Photo:
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (256, 1))] * 3, axis=-1)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    return Photo(name, encoded.getvalue())


# --- finding the files -----------------------------------------------------------------------


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(InputError, match="unknown preset 'nope'") as caught:
        get_preset("nope")
    assert all(name in str(caught.value) for name in PRESETS)


@pytest.mark.parametrize("name", ["photomaker-v1", "photomaker-v2"])
def test_missing_sdxl_base_names_the_repo_and_the_pull_command(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ModelNotFoundError) as caught:
        locate(get_preset(name), models)
    message = str(caught.value)
    assert f"SDXL base {REALVIS!r}" in message
    assert f"`farm models pull {name}`" in message


@pytest.mark.parametrize("name", ["photomaker-v1", "photomaker-v2"])
def test_missing_checkpoint_names_the_file_the_repo_and_the_pull_command(
    tmp_path: Path, tiny_build: Path, name: str
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    with pytest.raises(ModelNotFoundError) as caught:
        locate(get_preset(name), models)
    message = str(caught.value)
    assert f"needs {name}.bin from {CHECKPOINT_REPOS[name]}:" in message
    assert f"`farm models pull {name}`" in message


@pytest.mark.parametrize("name", ["photomaker-v1", "photomaker-v2"])
def test_locate_finds_base_and_checkpoint_in_the_hub_cache(
    tmp_path: Path, hub_cache: Path, tiny_build: Path, name: str
) -> None:
    sdxl = cache_repo(hub_cache, REALVIS, files_under(tiny_build / "sdxl"))
    checkpoint_file = f"{name}.bin"
    photomaker = cache_repo(
        hub_cache, CHECKPOINT_REPOS[name], {checkpoint_file: tiny_build / checkpoint_file}
    )
    models = tmp_path / "models"
    models.mkdir()
    files = locate(get_preset(name), models)
    assert files == ModelFiles(sdxl, photomaker / checkpoint_file, models)


def test_a_cached_snapshot_without_model_index_is_not_an_sdxl_base(
    tmp_path: Path, hub_cache: Path, tiny_build: Path
) -> None:
    # What downloading only the single-file checkpoint of the base repo leaves in the cache.
    cache_repo(
        hub_cache,
        REALVIS,
        {
            "RealVisXL_V4.0.safetensors": tiny_build
            / "sdxl/unet/diffusion_pytorch_model.safetensors"
        },
    )
    models = tmp_path / "models"
    shutil.copytree(tiny_build, models, ignore=shutil.ignore_patterns("sdxl"))
    with pytest.raises(ModelNotFoundError, match="`farm models pull photomaker-v1`"):
        locate(get_preset("photomaker-v1"), models)


def test_locate_reads_the_farm_models_dir_layout(tmp_path: Path, tiny_build: Path) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(tiny_build / "photomaker-v2.bin", models)
    files = locate(get_preset("photomaker-v2"), models)
    assert files == ModelFiles(models / "RealVisXL_V4.0", models / "photomaker-v2.bin", models)


def test_sdxl_base_override_is_a_folder(tmp_path: Path, tiny_build: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_build / "photomaker-v1.bin", models)
    preset = get_preset("photomaker-v1")
    files = locate(preset, models, sdxl_base=str(tiny_build / "sdxl"))
    assert files.sdxl_dir == tiny_build / "sdxl"
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match=f"SDXL base '{nowhere}'"):
        locate(preset, models, sdxl_base=nowhere)


# --- loading and rendering -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint_file", "storage"),
    [("photomaker-v1.bin", torch.bfloat16), ("photomaker-v1.safetensors", torch.float32)],
    ids=["pickle-bf16", "safetensors-fp32"],
)
def test_photomaker_v1_loads_and_renders(
    tmp_path: Path,
    tiny_build: Path,
    base_unet: UNet2DConditionModel,
    checkpoint_file: str,
    storage: torch.dtype,
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    encoder = build_id_encoder(tiny_id_encoder_config(1))
    checkpoint = save_checkpoint(
        models / checkpoint_file, encoder, tiny_lora(base_unet), dtype=storage
    )
    preset = get_preset("photomaker-v1")
    # `locate` finds the official file name; the safetensors variant is handed over by path.
    files = None
    if checkpoint.name != preset.checkpoint_file:
        files = ModelFiles(models / "RealVisXL_V4.0", checkpoint, models)
    loaded = load_preset(preset, models, device="cpu", files=files)
    assert_lora_fused(loaded, base_unet, checkpoint)
    identity = loaded.identity.tokens_for(photos_of("newton_man", 2))
    assert identity.tokens.shape == (2, 1, 64)
    render_one(loaded, identity)


def test_photomaker_v2_loads_with_buffalo_l_and_renders(
    tmp_path: Path, tiny_build: Path, base_unet: UNet2DConditionModel, v2_checkpoint: Path
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(v2_checkpoint, models)
    # The reference photos are portraits: a face box in the middle of the frame fits them.
    write_fake_pack(models / "insightface/models/buffalo_l", face_box=(0.25, 0.2, 0.75, 0.8))
    loaded = load_preset(get_preset("photomaker-v2"), models, device="cpu")
    # The widths were read off the weights: the file carries no config.
    assert loaded.identity.encoder.config == V2_CONFIG
    assert loaded.identity.faces.name.startswith("insightface:buffalo_l:")
    assert_lora_fused(loaded, base_unet, v2_checkpoint)
    identity = loaded.identity.tokens_for(photos_of("newton_man", 2))
    assert identity.tokens.shape == (2, 2, 64)
    render_one(loaded, identity)


def test_photomaker_v2_refuses_a_photo_without_a_face(
    tmp_path: Path, tiny_build: Path, v2_checkpoint: Path
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(v2_checkpoint, models)
    # Never confident enough, at any detection size.
    write_fake_pack(models / "insightface/models/buffalo_l", score=0.0)
    loaded = load_preset(get_preset("photomaker-v2"), models, device="cpu")
    with pytest.raises(InputError, match=r"photo 'sky\.png': no face found"):
        loaded.identity.tokens_for([gradient_photo("sky.png")])


# --- fast presets: a few-step LoRA on top ----------------------------------------------------


def test_a_fast_preset_needs_its_lora_and_says_where_it_goes(
    tmp_path: Path, tiny_build: Path
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(tiny_build / "photomaker-v2.bin", models)
    with pytest.raises(ModelNotFoundError) as caught:
        locate(get_preset("photomaker-v2-lightning"), models)
    message = str(caught.value)
    lora = "sdxl_lightning_4step_lora.safetensors"
    assert f"needs the LoRA {lora} from ByteDance/SDXL-Lightning" in message
    assert "`farm models pull photomaker-v2-lightning`" in message
    assert str(models / "loras" / "SDXL-Lightning" / lora) in message


def test_a_fast_preset_finds_its_lora_in_the_hub_cache_and_in_the_models_dir(
    tmp_path: Path, hub_cache: Path, tiny_build: Path
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(tiny_build / "photomaker-v2.bin", models)
    fast = get_preset("photomaker-v2-lcm").fast
    cached = cache_repo(hub_cache, fast.repo, {fast.file: tiny_build / TINY_FAST_LORA})
    assert locate(get_preset("photomaker-v2-lcm"), models).fast_lora == cached / fast.file
    # A folder per repo: LCM-LoRA's file has the generic name pytorch_lora_weights.safetensors.
    own = models / "loras" / "lcm-lora-sdxl" / fast.file
    own.parent.mkdir(parents=True)
    shutil.copy(tiny_build / TINY_FAST_LORA, own)
    assert locate(get_preset("photomaker-v2-lcm"), models).fast_lora == own


def test_a_real_fast_preset_loads_its_lora_and_scheduler_and_renders(
    tmp_path: Path, tiny_build: Path, base_unet: UNet2DConditionModel, v2_checkpoint: Path
) -> None:
    models = farm_models_dir(tmp_path, tiny_build)
    shutil.copy(v2_checkpoint, models)
    write_fake_pack(models / "insightface/models/buffalo_l", face_box=(0.25, 0.2, 0.75, 0.8))
    preset = get_preset("photomaker-v2-lightning")
    lora = models / "loras" / "SDXL-Lightning" / preset.fast.file
    lora.parent.mkdir(parents=True)
    shutil.copy(tiny_build / TINY_FAST_LORA, lora)
    loaded = load_preset(preset, models, device="cpu")
    scheduler = loaded.pipeline.scheduler
    assert isinstance(scheduler, EulerDiscreteScheduler)
    assert scheduler.config.timestep_spacing == "trailing"
    # conv_in: PhotoMaker's LoRA leaves it alone, the fast one changes it.
    assert not torch.equal(loaded.pipeline.unet.conv_in.weight, base_unet.conv_in.weight)
    render_one(loaded, loaded.identity.tokens_for(photos_of("newton_man", 2)))
