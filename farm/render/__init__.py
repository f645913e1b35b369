"""The render engine.

One setting on import, before any module here imports diffusers: diffusers' SDXL pipelines
import transformers' `CLIPImageProcessor`, which without torchvision (never installed here: the
farm preprocesses photos itself) falls back to its PIL twin with a warning on every start.
The fallback is what the farm wants, so the warning is noise in `farm render`'s output.
"""

import logging

logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
