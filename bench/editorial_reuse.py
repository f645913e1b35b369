"""What the editorial loop saves: a story edited and rendered again, against rendering it whole.

A studio edits two prompts of a story and renders it again into the same folder (`farm render
--out DIR`): the changed scenes render, the others are found by content hash. This bench times,
on the tiny preset in this process, a whole story rendered into an empty folder, then the same
story with `--changed` prompts edited rendered into that folder, then nothing changed at all;
each `--repeats` times (the first whole run also builds caches, so it is not counted), and
prints the medians and their ratios; the JSON goes to `--out`.

    .venv/bin/python bench/editorial_reuse.py [--scenes 24] [--changed 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farm.render.folder_reuse import FolderReuse, story_hasher  # noqa: E402
from farm.render.loading import load_preset  # noqa: E402
from farm.render.presets import PRESETS, get_preset  # noqa: E402
from farm.render.story_render import render_story  # noqa: E402
from farm.settings import Settings  # noqa: E402
from farm.story import Story, load_story  # noqa: E402


def story_of(base: Story, scenes: int, changed: int) -> Story:
    prompts = [f"a man img in scene {n}" for n in range(scenes)]
    for n in range(changed):  # spread over the story, as a reviewer's notes are
        prompts[(n * scenes) // max(changed, 1)] += ", at dusk"
    first = base.scenes[0]
    return base.model_copy(
        update={"scenes": [first.model_copy(update={"prompt": p}) for p in prompts]}
    )


def timed(story: Story, out: Path, loaded, settings: Settings) -> tuple[float, int]:
    made: list[int] = []
    reuse = FolderReuse(out, story_hasher(story, settings))
    started = time.perf_counter()
    render_story(story, out, loaded, reuse=reuse, on_render=lambda p, _: made.append(1))
    return time.perf_counter() - started, len(made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--changed", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/editorial_reuse.json")
    args = parser.parse_args()

    settings = Settings.from_env()
    base = load_story(ROOT / "examples/story.yaml", presets=PRESETS)
    base = base.model_copy(update={"variants": 1})
    loaded = load_preset(get_preset(base.preset), settings.models_dir, device="cpu")
    whole, edited, unchanged = [], [], []
    counts = {}
    with tempfile.TemporaryDirectory() as scratch:
        warm = Path(scratch) / "warm"
        timed(story_of(base, args.scenes, 0), warm, loaded, settings)  # caches, not counted
        for run in range(args.repeats):
            out = Path(scratch) / f"run{run}"
            seconds, counts["whole"] = timed(story_of(base, args.scenes, 0), out, loaded, settings)
            whole.append(seconds)
            story = story_of(base, args.scenes, args.changed)
            seconds, counts["edited"] = timed(story, out, loaded, settings)
            edited.append(seconds)
            seconds, counts["unchanged"] = timed(story, out, loaded, settings)
            unchanged.append(seconds)
            shutil.rmtree(out)
    result = {
        "scenes": args.scenes,
        "changed": args.changed,
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "renders": counts,
        "median_s": {
            "whole": statistics.median(whole),
            "edited": statistics.median(edited),
            "unchanged": statistics.median(unchanged),
        },
    }
    median = result["median_s"]
    result["edited_over_whole"] = median["edited"] / median["whole"]
    result["unchanged_over_whole"] = median["unchanged"] / median["whole"]
    print(
        f"{args.scenes} scenes: whole {median['whole']:.2f} s ({counts['whole']} renders), "
        f"{args.changed} edited {median['edited']:.2f} s ({counts['edited']} renders, "
        f"{result['edited_over_whole']:.2f}x), unchanged {median['unchanged']:.2f} s "
        f"({counts['unchanged']} renders, {result['unchanged_over_whole']:.2f}x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
