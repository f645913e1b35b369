"""`farm submit` with control images beside the story file, and its one-line refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from farm.context import Farm
from farm.controls import control_key
from farm.settings import Settings
from farmcli.main import main
from tests.farm.conftest import job_rows
from tests.fixtures.tiny import EXAMPLES


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_DATABASE_URL": database_url}
    assert CliRunner().invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    return env


def story_file(folder: Path, scene: dict) -> Path:
    """The example story with one scene, its photos and a pose map beside it."""
    shutil.copytree(EXAMPLES / "photos", folder / "photos")
    (folder / "poses").mkdir()
    Image.new("RGB", (64, 64), "white").save(folder / "poses" / "wave.png")
    story = yaml.safe_load((EXAMPLES / "story.yaml").read_text())
    story.pop("aspect", None)
    story.update(width=64, height=64, steps=2)
    story["character"]["outfits"] = {"coat": {"prompt": "wearing a red coat"}}
    story["scenes"] = [{"prompt": story["scenes"][0]["prompt"], **scene}]
    path = folder / "story.yaml"
    path.write_text(yaml.safe_dump(story))
    return path


def test_submit_stores_the_map_beside_the_story_by_content(env, tmp_path):
    control = {"image": "poses/wave.png", "type": "depth", "scale": 0.5}
    path = story_file(tmp_path, {"outfit": "coat", "control": control})
    result = CliRunner().invoke(main, ["submit", str(path)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    farm = Farm(Settings.from_env(env))
    try:
        job, _, renders = job_rows(farm, result.stdout.strip())
        ref = job.spec["scenes"][0]["control"]["image"]
        assert ref.startswith("sha256:")
        stored = farm.storage.get(control_key(ref.removeprefix("sha256:")))
        assert stored == (tmp_path / "poses" / "wave.png").read_bytes()
        assert "wearing a red coat" in renders[0].prompt
    finally:
        farm.close()


@pytest.mark.parametrize(
    ("scene", "message"),
    [
        ({"outfit": "cape"}, "scenes[0].outfit: the character Newton has no outfit 'cape'"),
        (
            {"control": {"image": "poses/none.png", "type": "canny"}},
            "poses/none.png is not a file",
        ),
        (
            {"control": {"image": "story.yaml", "type": "canny"}},
            "scenes[0].control.image: control image 'story.yaml': not a readable JPEG, PNG",
        ),
    ],
)
def test_bad_dressing_is_one_line_and_nothing_written(env, tmp_path, scene, message):
    path = story_file(tmp_path, scene)
    result = CliRunner().invoke(main, ["submit", str(path)], env=env, catch_exceptions=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert message in result.stderr and result.stderr.startswith("error: ")
    farm = Farm(Settings.from_env(env))
    try:
        assert list(farm.storage.list("controls/")) == [] and list(farm.storage.list()) == []
    finally:
        farm.close()
