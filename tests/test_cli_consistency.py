"""Consistency across scenes through `farm render` and `farm submit`: a story-mode story
renders; consistency on a preset that cannot take it is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.fixtures.tiny import EXAMPLES
from tests.test_cli import farm


def example_with(tmp_path: Path, **changes: object) -> Path:
    shutil.copytree(EXAMPLES / "photos", tmp_path / "photos")
    story = yaml.safe_load((EXAMPLES / "story.yaml").read_text()) | changes
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(story))
    return path


def test_farm_render_renders_a_story_mode_story(tmp_path):
    story = example_with(
        tmp_path, steps=2, consistency={"mode": "story", "reference_scenes": [2, 4]}
    )
    result = farm("render", str(story), "--out", str(tmp_path / "out"), data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(
        r["file"] for r in manifest["renders"]
    )
    assert len(manifest["renders"]) == 6


@pytest.mark.parametrize("command", ["render", "submit"])
def test_consistency_on_a_fast_preset_is_one_line(tmp_path, command):
    story = example_with(tmp_path, preset="tiny-fast", consistency={"mode": "batch"})
    extra = ["--out", str(tmp_path / "out")] if command == "render" else []
    result = farm(command, str(story), *extra, data_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "preset 'tiny-fast' does not support consistency" in result.stderr
    assert not (tmp_path / "out").exists()
