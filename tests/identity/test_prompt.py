"""Prompt expansion for the stacked ID embedding, on a real CLIP BPE tokenizer (the tiny one)."""

from __future__ import annotations

import pytest

from farm.errors import InputError
from farm.identity.prompt import expand_prompt, register_triggers, text_only_prompt
from farm.render.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    first, second = tiny_tokenizer("<|endoftext|>"), tiny_tokenizer("!")
    for tokenizer in (first, second):
        register_triggers(tokenizer, ["img", "img2"])
    return first, second


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_class_word_is_repeated_once_per_id_token_and_trigger_dropped(tokenizers):
    tokenizer = tokenizers[0]
    expanded = expand_prompt(tokenizer, "a photo of a man img reading", {"img": 6})
    man = ids_of(tokenizer, "man")[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = [bos, *ids_of(tokenizer, "a photo of a"), *[man] * 6, *ids_of(tokenizer, "reading"), eos]
    assert list(expanded.input_ids[: len(body)]) == body
    assert len(expanded.input_ids) == 77
    assert set(expanded.input_ids[len(body) :]) == {tokenizer.pad_token_id}
    assert expanded.positions == {"img": (5, 6, 7, 8, 9, 10)}
    assert tokenizer.convert_tokens_to_ids("img") not in expanded.input_ids


def test_both_sdxl_tokenizers_agree_on_positions_but_pad_differently(tokenizers):
    first, second = (expand_prompt(t, "a man img in the garden", {"img": 2}) for t in tokenizers)
    assert first.positions == second.positions
    assert first.input_ids[-1] != second.input_ids[-1]  # '<|endoftext|>' vs '!' padding


def test_trigger_is_found_whatever_its_case(tokenizers):
    expanded = expand_prompt(tokenizers[0], "A MAN IMG reading", {"img": 1})
    assert expanded.positions == {"img": (2,)}


def test_several_identities_each_get_their_own_positions(tokenizers):
    tokenizer = tokenizers[0]
    expanded = expand_prompt(
        tokenizer, "a man img and a woman img2 at a table", {"img": 2, "img2": 4}
    )
    assert expanded.positions == {"img": (2, 3), "img2": (6, 7, 8, 9)}
    woman = ids_of(tokenizer, "woman")[0]
    assert [expanded.input_ids[i] for i in expanded.positions["img2"]] == [woman] * 4


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a photo of a man reading", "has no trigger word 'img'"),
        ("a man img and a man img", "appears more than once"),
        ("img man reading", "must directly follow a class word"),
        ("a man, img reading", "must directly follow a class word"),
        ("a img2 img", "must directly follow a class word"),
        ("a superhero img flying", "split into several tokens"),
    ],
)
def test_unusable_prompts_are_input_errors(tokenizers, prompt, message):
    with pytest.raises(InputError, match=message):
        expand_prompt(tokenizers[0], prompt, {"img": 2})


def test_class_word_must_match_the_character(tokenizers):
    with pytest.raises(InputError, match="class word is 'woman'"):
        expand_prompt(tokenizers[0], "a man img", {"img": 2}, {"img": "woman"})


def test_too_long_for_the_identity_tokens_is_an_error_not_a_crash(tokenizers):
    prefix = " ".join(["the"] * 70)
    with pytest.raises(InputError, match="too long for its identity tokens"):
        expand_prompt(tokenizers[0], f"{prefix} man img", {"img": 8})


def test_long_text_after_the_identity_is_cut_at_77_as_the_reference_does(tokenizers):
    tokenizer = tokenizers[0]
    suffix = " ".join(["in the garden"] * 40)
    expanded = expand_prompt(tokenizer, f"a man img {suffix}", {"img": 4})
    assert len(expanded.input_ids) == 77
    assert tokenizer.eos_token_id not in expanded.input_ids  # cut off with the text after 76
    assert expanded.input_ids[-1] == ids_of(tokenizer, suffix)[77 - 6 - 1]  # BOS, a, man x 4
    assert expanded.positions == {"img": (2, 3, 4, 5)}


def test_keep_end_truncation_keeps_end_of_text_in_the_last_place(tokenizers):
    tokenizer = tokenizers[0]
    suffix = " ".join(["in the garden"] * 40)
    reference = expand_prompt(tokenizer, f"a man img {suffix}", {"img": 4})
    kept = expand_prompt(tokenizer, f"a man img {suffix}", {"img": 4}, truncation="keep-end")
    assert kept.input_ids[-1] == tokenizer.eos_token_id
    assert kept.input_ids[:76] == reference.input_ids[:76]


@pytest.mark.parametrize(("truncation", "room"), [("reference", 76), ("keep-end", 75)])
def test_identity_tokens_may_reach_the_last_place_the_truncation_leaves(
    tokenizers, truncation, room
):
    """BOS takes place 0; "reference" gives the identity every other place, "keep-end" all but
    the end-of-text token's."""
    tokenizer = tokenizers[0]
    prefix = " ".join(["the"] * (room - 4))
    expanded = expand_prompt(tokenizer, f"{prefix} man img", {"img": 4}, truncation=truncation)
    assert expanded.positions["img"][-1] == room
    with pytest.raises(InputError, match=f"a prompt holds {room} tokens"):
        expand_prompt(tokenizer, f"{prefix} the man img", {"img": 4}, truncation=truncation)


@pytest.mark.parametrize("trigger", ["x", "k"])
def test_a_trigger_that_is_already_a_word_piece_is_found(trigger):
    """CLIP's vocabulary has `tok`, `pic` and `per` as word pieces; in the tiny vocabulary single
    letters are. The reference accepts them as triggers, and so must the farm."""
    tokenizer = tiny_tokenizer("!")
    assert trigger in tokenizer.get_vocab()
    register_triggers(tokenizer, [trigger])
    expanded = expand_prompt(tokenizer, f"a man {trigger} reading", {trigger: 2})
    assert expanded.positions == {trigger: (2, 3)}


def test_a_trigger_piece_inside_another_word_is_not_the_trigger():
    tokenizer = tiny_tokenizer("!")
    register_triggers(tokenizer, ["x"])
    expanded = expand_prompt(tokenizer, "a man x playing a xylophone", {"x": 1})
    assert expanded.positions == {"x": (2,)}
    piece = tokenizer.convert_tokens_to_ids("x")
    assert piece in expanded.input_ids  # the "x" of "xylophone" stays in the text


def test_text_only_prompt_drops_every_trigger():
    assert text_only_prompt("a man img reading, img2", ["img", "img2"]) == "a man reading,"
    assert text_only_prompt("cinematic photo a man IMG . film", ["img"]) == (
        "cinematic photo a man . film"
    )
