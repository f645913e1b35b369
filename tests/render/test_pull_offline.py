"""`farm models pull` on a machine that cannot reach the hub: one line that says what to
download and where to put it, never the hub client's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FARM = Path(sys.executable).with_name("farm")


def test_pull_without_internet_is_one_line_naming_files_and_folders(tmp_path: Path) -> None:
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(FARM), "models", "pull", "photomaker-v2-lightning"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    models = tmp_path / "models"
    assert line.startswith("error: cannot download preset 'photomaker-v2-lightning'")
    assert f"SG161222/RealVisXL_V4.0's diffusers folders into {models / 'RealVisXL_V4.0'}" in line
    assert f"photomaker-v2.bin from TencentARC/PhotoMaker-V2 into {models};" in line
    assert f"from ByteDance/SDXL-Lightning into {models / 'loras' / 'SDXL-Lightning'}" in line
    assert not list(models.rglob("*.safetensors"))
