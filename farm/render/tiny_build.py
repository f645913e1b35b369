"""The tiny presets' build number. Their weights are made in code (farm/render/tiny.py), so the
number stands for the files: built folders are keyed by it, and so are render hashes
(farm/render_hash.py), which must never reuse a picture that other weights made. Bump it when
anything in the build changes the weights. A module of its own, so that naming the build never
imports torch, and the tiny build never imports the presets that load it."""

TINY_BUILD = 3
