"""`IdentityTokens`: the prompt-independent half of the stacked ID embedding, and identity mixing.

A character's ID tokens depend only on its photos and the encoder weights, never on the prompt,
so the farm computes them once and ships them around (memory, object storage) as safetensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from farm.errors import InputError


@dataclass(frozen=True)
class IdentityTokens:
    """ID tokens `[N, T, D]` of N photos (T = 1 for V1, 2 for V2), fp32 on the CPU.

    `encoder_fingerprint` names the weights that made them and `photos_fingerprint` the photos
    and preprocessing: together they are the cache key.
    """

    tokens: torch.Tensor
    encoder_fingerprint: str
    photos_fingerprint: str

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0] * self.tokens.shape[1]

    def flat(self) -> torch.Tensor:
        """`[N*T, D]` in the reference's order: photo 1 token 1, photo 1 token 2, photo 2 ..."""
        return self.tokens.reshape(-1, self.tokens.shape[-1])

    def to_bytes(self) -> bytes:
        metadata = {
            "encoder_fingerprint": self.encoder_fingerprint,
            "photos_fingerprint": self.photos_fingerprint,
        }
        return save_safetensors({"tokens": self.tokens.contiguous()}, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityTokens:
        tensors = load_safetensors(data)
        metadata = _read_metadata(data)
        return cls(
            tokens=tensors["tokens"],
            encoder_fingerprint=metadata["encoder_fingerprint"],
            photos_fingerprint=metadata["photos_fingerprint"],
        )


def _read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (its header is a length-prefixed JSON)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def concat(identities: Sequence[IdentityTokens]) -> IdentityTokens:
    """The reference's way of mixing people: all their photos together, each photo its tokens,
    so a person's share of the identity is their share of the photos."""
    _check_compatible(identities)
    return IdentityTokens(
        tokens=torch.cat([i.tokens for i in identities]),
        encoder_fingerprint=identities[0].encoder_fingerprint,
        photos_fingerprint=_combine("concat", identities, None),
    )


def mix(
    identities: Sequence[IdentityTokens], weights: Sequence[float], slots: int | None = None
) -> IdentityTokens:
    """A weighted blend of several people into one identity of `slots` photo slots.

    The weights act on the ID tokens themselves: they are normalised to sum to 1, and slot k of
    the result is sum_p w_p * tokens_p[k mod N_p] (each person's photos cycled to fill the
    slots). A weight of 1 on one person and 0 on the others gives that person's tokens exactly
    (with `slots` = their photo count); 0.5/0.5 sits halfway between two faces in ID-token
    space, before fusion. `slots` defaults to the largest photo count among them.
    """
    _check_compatible(identities)
    if len(weights) != len(identities):
        raise InputError(
            f"mix needs one weight per identity: {len(identities)} identities, "
            f"{len(weights)} weights"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError(f"mixing weights must be >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    slots = slots or max(i.tokens.shape[0] for i in identities)
    blended = torch.zeros(slots, *identities[0].tokens.shape[1:], dtype=torch.float32)
    for identity, weight in zip(identities, weights, strict=True):
        index = torch.arange(slots) % identity.tokens.shape[0]
        blended += (weight / total) * identity.tokens[index].float()
    return IdentityTokens(
        tokens=blended,
        encoder_fingerprint=identities[0].encoder_fingerprint,
        photos_fingerprint=_combine("mix", identities, [w / total for w in weights] + [slots]),
    )


def _check_compatible(identities: Sequence[IdentityTokens]) -> None:
    if not identities:
        raise InputError("mixing needs at least one identity")
    fingerprints = {i.encoder_fingerprint for i in identities}
    shapes = {tuple(i.tokens.shape[1:]) for i in identities}
    if len(fingerprints) > 1 or len(shapes) > 1:
        raise InputError("identities made by different encoders cannot be mixed")


def _combine(kind: str, identities: Sequence[IdentityTokens], extra: list[float] | None) -> str:
    parts = [kind, *(i.photos_fingerprint for i in identities), json.dumps(extra)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
