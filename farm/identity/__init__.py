"""PhotoMaker's identity engine: ID encoders V1/V2, prompt expansion, ID tokens and their cache.

Public API used by the farm and by external compatibility checks:
`load_id_encoder(path, version)` returns an encoder with `encode_images(pixel_values,
face_embeds=None) -> [N, T, 2048]` and `fuse(class_embeds, id_tokens) -> [M, 2048]`.

The names are imported on first use: the package's light modules (faces, photos' hashing) are
imported by the dashboard and the CLI's control-plane commands, which must not pay for torch and
transformers (tests/test_imports.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farm.identity.checkpoint import load_id_encoder, read_checkpoint, save_checkpoint
    from farm.identity.encoders import IDEncoder, IDEncoderConfig, IDEncoderV1, IDEncoderV2
    from farm.identity.tokens import IdentityTokens, concat, mix

_HOMES = {
    "load_id_encoder": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "IDEncoder": "encoders",
    "IDEncoderConfig": "encoders",
    "IDEncoderV1": "encoders",
    "IDEncoderV2": "encoders",
    "IdentityTokens": "tokens",
    "concat": "tokens",
    "mix": "tokens",
}

__all__ = [
    "IDEncoder",
    "IDEncoderConfig",
    "IDEncoderV1",
    "IDEncoderV2",
    "IdentityTokens",
    "concat",
    "load_id_encoder",
    "mix",
    "read_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
