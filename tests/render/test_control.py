"""Pose and framing per scene on the tiny preset: ControlNet and T2I-Adapter residuals reach the
UNet, a zero scale is no control, and control models load from diffusers folders."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from PIL import Image, ImageDraw

from farm.control_spec import ControlType, SceneControl
from farm.errors import InputError, ModelNotFoundError
from farm.identity.tokens import IdentityTokens
from farm.recipe import RECIPE_CHUNK, render_filename
from farm.render.control import ControlModels, load_control_model
from farm.render.control_models import locate_control, tiny_adapter, tiny_controlnet
from farm.render.pipeline import SceneRender
from farm.render.presets import PRESETS
from farm.render.story_render import render_story
from farm.render.tiny import ensure_tiny
from farm.story import load_story
from tests.fixtures.tiny import EXAMPLES, photos_of

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def newton(tiny) -> IdentityTokens:
    return tiny.identity.tokens_for(photos_of("newton_man", 1))


def pose_map(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A stick figure, as an OpenPose skeleton is drawn: coloured limbs on black."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    draw.line([(32, 10), (32, 40)], fill=(255, 0, 0), width=3)
    draw.line([(32, 40), (20, 60), (32, 40), (44, 60)], fill=(0, 255, 0), width=3)
    draw.line([(16, 22), (48, 22)], fill=(0, 0, 255), width=3)
    return image


def final_latents(tiny, identity, renders, **kwargs) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    options = dict(steps=2, guidance=5.0, style_strength=20, **SIZE) | kwargs
    tiny.pipeline(renders, {"img": identity}, callback=lambda s: seen.append(s.latents), **options)
    return seen[-1]


def scene(seed: int, control: tuple[ControlType, Image.Image, float] | None = None) -> SceneRender:
    if control is None:
        return SceneRender("a man img standing in the street", "lowres", seed)
    kind, image, scale = control
    spec = SceneControl(image="pose.png", type=kind, scale=scale)
    return SceneRender("a man img standing in the street", "lowres", seed, spec, image)


@pytest.mark.parametrize("kind", [ControlType.OPENPOSE, ControlType.CANNY])  # ControlNet, adapter
def test_a_zero_scale_is_no_control_and_a_nonzero_one_moves_the_latents(tiny, newton, kind):
    plain = final_latents(tiny, newton, [scene(5)])
    zero = final_latents(tiny, newton, [scene(5, (kind, pose_map(), 0.0))])
    steered = final_latents(tiny, newton, [scene(5, (kind, pose_map(), 1.0))])
    assert torch.equal(zero, plain)
    assert (steered - plain).abs().max() > 1e-3


def test_each_render_of_a_batch_has_its_own_control_and_scale(tiny, newton):
    pose = pose_map()
    plain = final_latents(tiny, newton, [scene(1), scene(2), scene(3)])
    mixed = final_latents(
        tiny,
        newton,
        [
            scene(1, (ControlType.OPENPOSE, pose, 0.0)),
            scene(2, (ControlType.DEPTH, pose, 1.0)),
            scene(3),
        ],
    )
    half = final_latents(
        tiny, newton, [scene(1), scene(2, (ControlType.DEPTH, pose, 0.5)), scene(3)]
    )
    # Rows without control (or at scale 0) are untouched by their neighbours' residuals.
    assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[2], plain[2])
    assert torch.equal(half[0], plain[0]) and torch.equal(half[2], plain[2])
    # The scale is the row's own: half of it moves the latents less than all of it.
    moved, moved_half = (mixed[1] - plain[1]).abs().mean(), (half[1] - plain[1]).abs().mean()
    assert 0 < moved_half < moved


def test_without_guidance_the_control_still_steers(tiny, newton):
    control = (ControlType.OPENPOSE, pose_map(), 1.0)
    plain = final_latents(tiny, newton, [scene(4)], guidance=1.0)
    steered = final_latents(tiny, newton, [scene(4, control)], guidance=1.0)
    assert (steered - plain).abs().max() > 1e-3


def test_a_control_map_of_the_wrong_size_is_refused_before_rendering(tiny, newton):
    control = (ControlType.OPENPOSE, pose_map((64, 48)), 1.0)
    with pytest.raises(InputError, match="control image is 64x48, but the render is 64x64"):
        tiny.pipeline([scene(1, control)], {"img": newton}, steps=2, **SIZE)


def _tiny_unet(models_dir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(ensure_tiny(models_dir) / "sdxl", subfolder="unet")


def test_diffusers_folders_in_the_models_dir_load_through_the_real_loader(
    tiny, newton, models_dir, tmp_path
):
    studio = tmp_path / "models"
    controlnet = tiny_controlnet(_tiny_unet(models_dir), seed=99)
    # Where a studio puts its own: controls/<type>/, or a folder named after the official repo.
    controlnet.save_pretrained(studio / "controls" / "openpose")
    tiny_adapter(seed=98).save_pretrained(studio / "t2i-adapter-canny-sdxl-1.0", variant="fp16")
    assert locate_control(studio, ControlType.OPENPOSE) == studio / "controls" / "openpose"
    loaded = load_control_model(
        locate_control(studio, ControlType.OPENPOSE), torch.device("cpu"), torch.float32
    )
    assert isinstance(loaded, ControlNetModel)
    for name, weight in controlnet.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name
    adapter = load_control_model(
        locate_control(studio, ControlType.CANNY), torch.device("cpu"), torch.float32
    )
    assert isinstance(adapter, T2IAdapter)

    # And they steer a render as the pipeline's own control models.
    built_in = tiny.pipeline.controls
    where = functools.partial(locate_control, studio)
    tiny.pipeline.controls = ControlModels(where, torch.device("cpu"), torch.float32)
    try:
        control = (ControlType.OPENPOSE, pose_map(), 1.0)
        plain = final_latents(tiny, newton, [scene(8)])
        steered = final_latents(tiny, newton, [scene(8, control)])
        with pytest.raises(ModelNotFoundError, match="controls/depth"):
            depth = (ControlType.DEPTH, pose_map(), 1.0)
            tiny.pipeline([scene(8, depth)], {"img": newton}, steps=2, **SIZE)
    finally:
        tiny.pipeline.controls = built_in
    assert (steered - plain).abs().max() > 1e-3


def test_a_missing_control_model_says_where_to_put_it(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        locate_control(tmp_path, ControlType.DEPTH)
    message = str(caught.value)
    assert str(tmp_path / "controls" / "depth") in message
    assert "diffusers/controlnet-depth-sdxl-1.0" in message
    assert "TencentARC/t2i-adapter-depth-midas-sdxl-1.0" in message


def test_a_folder_of_another_model_is_refused(tmp_path):
    folder = tmp_path / "controls" / "canny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelNotFoundError, match="not an SDXL ControlNetModel or T2IAdapter"):
        load_control_model(folder, torch.device("cpu"), torch.float32)


def _story_file(folder: Path, pose: Image.Image) -> Path:
    """The example story's first scene, posed by a map beside the file, and a plain one."""
    shutil.copytree(EXAMPLES / "photos", folder / "photos")
    pose.save(folder / "pose.png")
    story = yaml.safe_load((EXAMPLES / "story.yaml").read_text())
    first = story["scenes"][0]
    story.update(steps=2, width=64, height=64, variants=1)
    story.pop("aspect", None)
    control = {"image": "pose.png", "type": "openpose", "scale": 1.0}
    story["scenes"] = [{**first, "control": control}, {**first, "variants": 1}]
    path = folder / "story.yaml"
    path.write_text(yaml.safe_dump(story))
    return path


def test_farm_render_reads_the_map_beside_the_story_and_records_it(tiny, tmp_path):
    story = load_story(_story_file(tmp_path, pose_map()), presets=PRESETS)
    manifest = render_story(story, tmp_path / "out", tiny)
    posed, plain = (Image.open(tmp_path / "out" / render_filename(i, 0)) for i in (0, 1))
    assert np.abs(np.asarray(posed, np.int16) - np.asarray(plain, np.int16)).max() > 0
    recipe = json.loads(posed.text[RECIPE_CHUNK])
    sha = hashlib.sha256((tmp_path / "pose.png").read_bytes()).hexdigest()
    assert recipe["control"] == {"image": sha, "type": "openpose", "scale": 1.0}
    assert "control" not in json.loads(plain.text[RECIPE_CHUNK])
    assert manifest.is_file()


def test_farm_render_refuses_a_map_of_the_wrong_size_before_writing(tiny, tmp_path):
    story = load_story(_story_file(tmp_path, pose_map((96, 64))), presets=PRESETS)
    with pytest.raises(InputError, match=r"scenes\[0\].control.image: .*96x64, but the story"):
        render_story(story, tmp_path / "out", tiny)
    assert not (tmp_path / "out").exists()


def test_farm_models_list_says_which_control_models_are_here(tiny, models_dir, tmp_path):
    from click.testing import CliRunner

    from farmcli.main import main

    studio = tmp_path / "models"
    shutil.copytree(models_dir / "tiny", studio / "tiny")  # already built: listed at once
    tiny_adapter(seed=1).save_pretrained(studio / "controls" / "canny")
    env = {"FARM_DATA_DIR": str(tmp_path), "FARM_MODELS_DIR": str(studio)}
    result = CliRunner().invoke(main, ["models", "list"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {
        line.split()[1]: line for line in result.output.splitlines() if line.startswith("control")
    }
    assert f"ready ({studio / 'controls' / 'canny'})" in lines["canny"]
    assert "missing: control type 'depth' needs an SDXL ControlNet" in lines["depth"]
