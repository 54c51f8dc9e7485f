"""Prompt syntax and text embeddings."""

from __future__ import annotations

import pytest
import torch

from sdlab.prompts import encode_prompts, parse_prompt_weights, tokenize_prompt


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("((cat))", [("cat", pytest.approx(1.21))]),
        ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
        ("(cat:1.3), dog", [("cat", 1.3), (", dog", 1.0)]),
        ("(a [b] c:1.5)", [("a ", 1.5), ("b", pytest.approx(1.5 / 1.1)), (" c", 1.5)]),
        (r"\(literal\) x", [("(literal) x", 1.0)]),
        ("(unclosed", [("unclosed", pytest.approx(1.1))]),
        ("stray) ]", [("stray) ]", 1.0)]),
        ("a BREAK b", [("a ", 1.0), ("BREAK", -1.0), (" b", 1.0)]),
        ("BREAKFAST", [("BREAKFAST", 1.0)]),
        ("ratio 16:9", [("ratio 16:9", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_a1111_attention_syntax(prompt, expected):
    assert parse_prompt_weights(prompt) == expected


def test_clip_vocabulary_is_the_real_one(tiny):
    # OpenAI CLIP's ids for "a photo of a cat", bos 49406, eos 49407
    assert tiny.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tiny.tokenizer) == 49408


def test_plain_prompt_gives_exactly_the_plain_text_encoder_output(tiny):
    prompt = "a photo of an astronaut riding a horse on mars"
    ids = tiny.tokenizer(
        prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = tiny.text_encoder(ids)[0]
    assert torch.equal(encode_prompts(tiny.tokenizer, tiny.text_encoder, [prompt]), expected)


def test_long_prompt_is_chunked_into_windows_of_77(tiny):
    prompt = " ".join(f"word{i}" for i in range(60))  # well over 75 tokens
    tokens = tokenize_prompt(tiny.tokenizer, prompt)
    assert tokens.ids.shape[0] >= 2 and tokens.ids.shape[1] == 77
    bos, eos = tiny.tokenizer.bos_token_id, tiny.tokenizer.eos_token_id
    assert all(row[0] == bos for row in tokens.ids.tolist())
    assert all(eos in row for row in tokens.ids.tolist())
    all_ids = tiny.tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokens.ids[0, 1:76].tolist() == all_ids[:75]  # nothing lost between chunks
    assert tokens.ids[1, 1:76].tolist() == all_ids[75:150]
    embeds = encode_prompts(tiny.tokenizer, tiny.text_encoder, [prompt, "short"])
    assert embeds.shape == (2, 77 * tokens.ids.shape[0], 32)


def test_break_starts_a_new_chunk(tiny):
    tokens = tokenize_prompt(tiny.tokenizer, "a cat BREAK a dog")
    assert tokens.ids.shape[0] == 2
    assert tokens.ids[1, 1:3].tolist() == tiny.tokenizer("a dog", add_special_tokens=False).input_ids


def test_weights_change_only_the_weighted_tokens_direction(tiny):
    plain = encode_prompts(tiny.tokenizer, tiny.text_encoder, ["a red cat"])
    weighted = encode_prompts(tiny.tokenizer, tiny.text_encoder, ["a (red:1.5) cat"])
    assert not torch.equal(plain, weighted)
    assert torch.isclose(plain.mean(), weighted.mean(), atol=1e-6)  # A1111 keeps the mean
    # tokens: bos, a, red, cat -> "red" (position 2) scaled 1.5x relative to the others
    ratio = (weighted[0, 2] / plain[0, 2]) / (weighted[0, 1] / plain[0, 1])
    assert torch.allclose(ratio, torch.full_like(ratio, 1.5), atol=1e-4)


def test_sd2_tokenizer_pads_with_exclamation_mark():
    from sdlab.loading.tokenizer import clip_tokenizer

    tok = clip_tokenizer(pad_token="!")
    ids = tokenize_prompt(tok, "a cat").ids[0].tolist()
    assert ids[:4] == [49406, 320, 2368, 49407] and set(ids[4:]) == {0}
