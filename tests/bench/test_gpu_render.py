"""The GPU benchmark's CPU smoke path, end to end in-process, so the script cannot rot."""

from __future__ import annotations

import json

import pytest

from bench import gpu_render

TINIEST = ["--cpu-smoke", "--size", "32", "--steps", "2", "--fast-steps", "1", "--repeats", "1"]


def test_cpu_smoke_times_both_paths_and_writes_the_figures(tmp_path):
    out = tmp_path / "figures.json"
    figures = gpu_render.main([*TINIEST, "--batches", "1,2", "--out", str(out)])

    assert json.loads(out.read_text()) == figures
    assert figures["device"].startswith("CPU")
    assert figures["dtype"] == "float32"
    cases = {(c["path"], c["mode"], c["batch"]): c for c in figures["cases"]}
    modes = ("2-step", "fast 1-step")
    offload = ("farm model-offload", "farm sequential-offload")
    assert set(cases) == {
        (path, mode, batch) for path in ("diffusers", "farm") for mode in modes for batch in (1, 2)
    } | {(path, mode, 1) for path in offload for mode in modes}
    for case in cases.values():
        assert case["skipped"] is None
        assert case["images_per_s"] > 0
        assert case["images_per_s"] * case["seconds_per_image"] == pytest.approx(1.0)
        assert case["peak_gb"] is None  # no GPU memory to measure on a CPU
    ratios = {(r["mode"], r["batch"]): r["ratio"] for r in figures["ratios_farm_over_diffusers"]}
    assert set(ratios) == {(mode, batch) for mode in modes for batch in (1, 2)}
    farm, baseline = cases[("farm", "2-step", 2)], cases[("diffusers", "2-step", 2)]
    assert ratios[("2-step", 2)] == farm["images_per_s"] / baseline["images_per_s"]
    # The offload modes ran (their code is covered) but a CPU has no GPU memory to save.
    assert figures["targets"]["low_vram_peak_gb_by_mode"] == {}
    assert figures["targets"]["low_vram_met"] is False


def test_budget_skips_cases_that_would_overrun_it(tmp_path):
    figures = gpu_render.main(
        [
            *TINIEST,
            *("--batches", "1", "--no-low-vram", "--budget-s", "0"),
            *("--out", str(tmp_path / "f.json")),
        ]
    )
    assert [c["skipped"] for c in figures["cases"]] == ["time budget"] * 4
    assert figures["ratios_farm_over_diffusers"] == []
    assert figures["targets"]["speedup_met"] is False
