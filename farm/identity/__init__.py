"""PhotoMaker's identity engine: ID encoders V1/V2, prompt expansion, ID tokens and their cache.

Public API used by the farm and by external compatibility checks:
`load_id_encoder(path, version)` returns an encoder with `encode_images(pixel_values,
face_embeds=None) -> [N, T, 2048]` and `fuse(class_embeds, id_tokens) -> [M, 2048]`.
"""

from farm.identity.checkpoint import load_id_encoder, read_checkpoint, save_checkpoint
from farm.identity.encoders import IDEncoder, IDEncoderConfig, IDEncoderV1, IDEncoderV2
from farm.identity.tokens import IdentityTokens, concat, mix

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
