"""`farm render` end to end through the real console script, and its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from farm.recipe import RECIPE_CHUNK
from tests.fixtures.tiny import EXAMPLES

FARM = Path(sys.executable).with_name("farm")


def farm(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(FARM), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def example_render(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("cli")
    result = farm("render", str(EXAMPLES / "story.yaml"), "--out", str(root / "out"), data_dir=root)
    assert result.returncode == 0, result.stderr
    return root / "out", result.stdout, result.stderr


def test_example_story_renders_every_scene_and_variant(example_render):
    out, stdout, _ = example_render
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == sorted(r["file"] for r in manifest["renders"])
    assert len(files) == 6  # five scenes, one of them with two variants
    assert str(out.resolve()) in stdout
    assert manifest["character"]["identity"]["tokens"] == 6  # 3 photos x 2 (V2)


def test_pngs_carry_their_recipe(example_render):
    out, _, _ = example_render
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["renders"][0]
    with Image.open(out / entry["file"]) as image:
        recipe = json.loads(image.text[RECIPE_CHUNK])
        parameters = image.text["parameters"]
        assert image.size == (64, 64)
    assert recipe["seed"] == entry["seed"]
    assert recipe["prompt"] == entry["prompt"] and " img" in recipe["prompt"]
    assert recipe["preset"] == "tiny" and recipe["steps"] == 4
    # AUTOMATIC1111's text, which image viewers and other tools read.
    prompt, negative, pairs = parameters.split("\n")
    assert prompt == entry["prompt"] and negative == f"Negative prompt: {entry['negative_prompt']}"
    assert pairs.startswith(
        f"Steps: 4, Sampler: Euler, CFG scale: 5.0, Seed: {entry['seed']}, Size: 64x64, "
        "Model: tiny, "
    )


def test_piped_the_render_draws_no_progress_bars(example_render):
    """A bar is for a terminal; piped, stderr holds no bar of the farm's or of the model
    libraries' (loading weights), and stdout only the result."""
    out, stdout, stderr = example_render
    assert stdout.splitlines() == [stdout.strip()] and str(out.resolve()) in stdout
    assert "%|" not in stderr and "it/s" not in stderr and "render/s" not in stderr, stderr


def test_bad_story_is_one_line_and_writes_nothing(tmp_path):
    story = tmp_path / "story.yaml"
    shutil.copytree(EXAMPLES / "photos", tmp_path / "photos")
    text = (EXAMPLES / "story.yaml").read_text().replace("photos/newton_1.jpg", "photos/gone.jpg")
    story.write_text(text)
    result = farm("render", str(story), "--out", str(tmp_path / "out"), data_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "gone.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["workers"], ["queues"], ["status", "3f2a9c1e"], ["gc"]])
def test_a_database_never_migrated_is_one_line_that_says_what_to_run(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    result = subprocess.run(
        [FARM, *command],
        env={**env, "FARM_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "error: the database has no farm schema: run `farm db upgrade`\n"


def test_a_database_out_of_reach_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    closed = "postgresql+psycopg://postgres@127.0.0.1:9/farm"  # nothing listens on port 9
    result = subprocess.run(
        [FARM, "workers"],
        env={**env, "FARM_DATA_DIR": str(tmp_path), "FARM_DATABASE_URL": closed},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach the database (")
    assert result.stderr.endswith("check FARM_DATABASE_URL and the server\n")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["render", "submit"])
def test_a_story_file_nested_100000_deep_is_one_line(tmp_path, command):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"scenes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    args = ["--out", str(tmp_path / "out")] if command == "render" else []
    result = farm(command, str(deep), *args, data_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"error: {deep}: nested more than 32 levels deep; a story needs 3 " + (
        "(the story, its scenes, a scene)\n"
    )


def test_the_story_size_limit_is_a_setting(tmp_path):
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path), "FARM_DOCUMENT_MAX_BYTES": "1024"}
    result = subprocess.run(
        [str(FARM), "render", str(EXAMPLES / "story.yaml"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert "bytes is over the 1,024-byte limit for a document" in result.stderr
    assert not (tmp_path / "out").exists()
