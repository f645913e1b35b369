"""Token-level prompt handling for the stacked ID embedding.

In a PhotoMaker prompt a class word is followed by a trigger word (`a man img reading`). For each
of SDXL's two tokenizers the trigger is dropped and the class token is repeated once per ID token
of that identity; the repeated positions are where the fuse module later writes the identity.
Several identities may share one prompt, each with its own trigger (`a man img1 and a woman
img2`). Every way a prompt can be unusable is an `InputError` that says how to fix it, raised
before any model runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from farm.errors import InputError
from farm.settings import PROMPT_TRUNCATIONS

_WORD_END = "</w>"


@dataclass(frozen=True)
class ExpandedPrompt:
    """A prompt ready for a text encoder: ids padded to the tokenizer's length, and for each
    trigger the positions of its repeated class tokens, in ID-token order."""

    input_ids: tuple[int, ...]
    positions: Mapping[str, tuple[int, ...]]


def register_triggers(tokenizer: PreTrainedTokenizerBase, triggers: Sequence[str]) -> None:
    """Make each trigger one token of its own, matched only as a whole word.

    Without this, BPE would split `img` into pieces and the trigger could not be found (or be
    found inside another word such as `imgur`). A trigger that is already a word piece of the
    vocabulary (`tok`, `pic`, `per` in CLIP's) is registered too, as the reference does: it
    keeps its vocabulary id, but a whole word `tok` now becomes that piece instead of `tok</w>`.
    """
    added = tokenizer.get_added_vocab()
    new = [t.lower() for t in triggers if t.lower() not in added]
    if new:
        tokenizer.add_tokens(
            [AddedToken(t, single_word=True, special=True) for t in new], special_tokens=True
        )


def expand_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    tokens_per_trigger: Mapping[str, int],
    class_words: Mapping[str, str] | None = None,
    truncation: str = "reference",
) -> ExpandedPrompt:
    """Drop each trigger and repeat the class word before it once per ID token of its identity.

    `tokens_per_trigger` maps each trigger to how many ID tokens that identity has (photos x 1
    for V1, photos x 2 for V2). `class_words`, when given, says which class word each trigger
    must follow. `truncation` says what an expanded prompt longer than the tokenizer's length
    loses: "reference" cuts it at the length, end-of-text token included, as PhotoMaker's
    pipeline does (SDXL's pooled embedding is then read at another position); "keep-end" keeps
    the end-of-text token in the last place, so the pooled embedding is read where SDXL's own
    truncation puts it.
    """
    if truncation not in PROMPT_TRUNCATIONS:
        raise ValueError(f"truncation must be one of {PROMPT_TRUNCATIONS}, got {truncation!r}")
    max_len = tokenizer.model_max_length
    trigger_ids = {tokenizer.convert_tokens_to_ids(t.lower()): t for t in tokens_per_trigger}
    # CLIP's BPE is uncased; lower-casing first lets `Img` find the (cased) added token too.
    # verbose=False: an over-long prompt is handled below, not warned about.
    text = prompt.lower()
    encoding = tokenizer(text, add_special_tokens=True, verbose=False, return_offsets_mapping=True)

    clean: list[int] = []
    class_index: dict[str, int] = {}
    for token_id, (start, end) in zip(encoding.input_ids, encoding.offset_mapping, strict=True):
        trigger = trigger_ids.get(token_id)
        # A trigger that is also a word piece (`per`) keeps that id inside other words
        # (`hyperreal`): only a whole word is the trigger.
        if trigger is None or not _is_whole_word(text, start, end):
            clean.append(token_id)
            continue
        if trigger in class_index:
            raise InputError(
                f"prompt {prompt!r}: the trigger word {trigger!r} appears more than once; "
                "write it once, right after the class word (e.g. 'a man img')"
            )
        _check_class_word(tokenizer, clean, prompt, trigger, class_words)
        class_index[trigger] = len(clean) - 1
    for trigger in tokens_per_trigger:
        if trigger not in class_index:
            raise InputError(
                f"prompt {prompt!r} has no trigger word {trigger!r}; write it right after the "
                f"class word, e.g. 'a photo of a man {trigger}'"
            )

    expanded: list[int] = []
    positions: dict[str, tuple[int, ...]] = {}
    by_index = {index: trigger for trigger, index in class_index.items()}
    for index, token_id in enumerate(clean):
        trigger = by_index.get(index)
        if trigger is None:
            expanded.append(token_id)
            continue
        count = tokens_per_trigger[trigger]
        positions[trigger] = tuple(range(len(expanded), len(expanded) + count))
        expanded.extend([token_id] * count)

    if len(expanded) > max_len:
        keep_end = truncation == "keep-end"
        room = max_len - 1 if keep_end else max_len  # positions the identity tokens may take
        last = max(p[-1] for p in positions.values())
        if last >= room:
            raise InputError(
                f"prompt {prompt!r} is too long for its identity tokens: they would end at "
                f"token {last + 1} but a prompt holds {room - 1} tokens; shorten the text "
                "before the class word or use fewer reference photos"
            )
        expanded = [*expanded[: max_len - 1], expanded[-1]] if keep_end else expanded[:max_len]
    expanded += [tokenizer.pad_token_id] * (max_len - len(expanded))
    return ExpandedPrompt(tuple(expanded), positions)


def _is_whole_word(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before == "_" or after.isalnum() or after == "_")


def _check_class_word(
    tokenizer: PreTrainedTokenizerBase,
    clean: list[int],
    prompt: str,
    trigger: str,
    class_words: Mapping[str, str] | None,
) -> None:
    """The token before a trigger must be a whole word of exactly one token: PhotoMaker repeats
    that one token, so a class word that BPE splits would repeat only its last piece."""
    pieces = tokenizer.convert_ids_to_tokens(clean[-2:])
    previous = pieces[-1] if clean else ""
    word = previous.removesuffix(_WORD_END)
    specials = set(tokenizer.all_special_tokens)
    if len(clean) < 2 or previous in specials or not word.isalpha():
        raise InputError(
            f"prompt {prompt!r}: the trigger word {trigger!r} must directly follow a class word, "
            f"e.g. 'a man {trigger} reading'"
        )
    before = pieces[-2] if len(pieces) == 2 else ""
    whole = previous.endswith(_WORD_END) and (before in specials or before.endswith(_WORD_END))
    if not whole:
        raise InputError(
            f"prompt {prompt!r}: the word before {trigger!r} is split into several tokens by the "
            "tokenizer; PhotoMaker needs a one-token class word such as man, woman, boy or girl"
        )
    expected = (class_words or {}).get(trigger)
    if expected is not None and word != expected.lower():
        raise InputError(
            f"prompt {prompt!r}: the trigger word {trigger!r} follows {word!r}, but its "
            f"character's class word is {expected!r}; write '{expected} {trigger}'"
        )


def text_only_prompt(prompt: str, triggers: Sequence[str]) -> str:
    """The prompt without its triggers: what the UNet sees before identity merging starts."""
    for trigger in triggers:
        prompt = re.sub(rf"\s*\b{re.escape(trigger)}\b", "", prompt, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", prompt).strip()


def present_triggers(prompt: str, triggers: Sequence[str]) -> list[str]:
    """The triggers a prompt names: in a story with a cast, each scene shows some of them."""
    return [t for t in triggers if re.search(rf"\b{re.escape(t)}\b", prompt, re.IGNORECASE)]
