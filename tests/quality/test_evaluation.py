"""`farm eval` over a folder: real face similarity, face share, and CLIP-T from a local model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from farm.evaluation import ClipScorer
from farm.render.tiny import tiny_tokenizer
from farmcli.main import main
from tests.fixtures.tiny import REFS


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP in the transformers folder layout, as a studio's real one would be."""
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_tokenizer("<|endoftext|>")
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
    )
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


def save_render(path, source, prompt):
    info = PngInfo()
    info.add_text("parameters", json.dumps({"prompt": prompt, "seed": 1}))
    Image.open(source).convert("RGB").resize((256, 256)).save(path, pnginfo=info)


def test_eval_folder_reports_faces_similarity_and_clip(tmp_path, clip_dir):
    renders, photos = tmp_path / "renders", tmp_path / "photos"
    renders.mkdir()
    photos.mkdir()
    newton = sorted((REFS / "newton_man").iterdir())
    for photo in newton[:2]:
        shutil.copy(photo, photos / photo.name)
    save_render(renders / "0000-v0.png", newton[3], "a man img reading")
    save_render(
        renders / "0001-v0.png",
        sorted((REFS / "scarletthead_woman").iterdir())[0],
        "a man img in the garden",
    )
    Image.linear_gradient("L").convert("RGB").save(renders / "0002-v0.png")  # no face
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--folder",
            str(renders),
            "--photos",
            str(photos),
            "--clip",
            str(clip_dir),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "with a face" in result.output and "2 (67%)" in result.output
    figures = json.loads(out.read_text())
    by_name = {r["name"]: r for r in figures["per_render"]}
    assert by_name["0002-v0.png"]["face_similarity"] is None
    assert by_name["0000-v0.png"]["face_similarity"] > by_name["0001-v0.png"]["face_similarity"]
    assert by_name["0002-v0.png"]["clip_t"] is None  # no prompt in its metadata
    assert 0 <= figures["clip_t_mean"] <= 100


def test_clip_score_is_cosine_times_100(clip_dir):
    scorer = ClipScorer(clip_dir)
    image = Image.new("RGB", (64, 64), "red")
    inputs = scorer.processor(text=["a man"], images=[image], return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = scorer.model(**inputs)
    expected = float(100 * (output.text_embeds @ output.image_embeds.T).clamp(min=0))
    assert scorer.score(image, "a man") == pytest.approx(expected, abs=1e-4)


def test_eval_needs_a_job_or_a_folder():
    result = CliRunner().invoke(main, ["eval"])
    assert result.exit_code == 2 and "give a JOB_ID" in result.output
