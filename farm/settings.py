"""One `Settings` object, read from the environment when asked for, never at import time.

With nothing set the farm runs on one machine with no servers: everything lives under the data
folder (SQLite, object storage as a folder, the embedded broker). Pointing the URLs at Redis,
PostgreSQL and an S3 endpoint turns the same code into a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "render-farm"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    models_dir: Path
    database_url: str
    broker_url: str
    storage_url: str
    s3_endpoint_url: str | None = None
    device: str | None = None
    sdxl_base: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("FARM_DATA_DIR") or _default_data_dir(env)).expanduser()
        models_dir = Path(env.get("FARM_MODELS_DIR") or data_dir / "models").expanduser()
        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            database_url=env.get("FARM_DATABASE_URL") or f"sqlite:///{data_dir / 'farm.db'}",
            broker_url=env.get("FARM_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.db'}",
            storage_url=env.get("FARM_STORAGE_URL") or (data_dir / "storage").as_uri(),
            s3_endpoint_url=env.get("FARM_S3_ENDPOINT_URL") or None,
            device=env.get("FARM_DEVICE") or None,
            sdxl_base=env.get("FARM_SDXL_BASE") or None,
        )
