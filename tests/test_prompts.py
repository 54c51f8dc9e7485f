"""Prompt syntax and text embeddings."""

from __future__ import annotations

import pytest
import torch

from sdlab.prompts import encode_prompts, parse_prompt_weights, tokenize_prompt

A = pytest.approx

# AUTOMATIC1111's prompt grammar (modules/prompt_parser.py `parse_prompt_attention`, its docstring's
# examples and more): (text, weight) runs; ("BREAK", None) is a chunk boundary.
GRAMMAR = [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("((cat))", [("cat", A(1.21))]),
    ("[cat]", [("cat", A(1 / 1.1))]),
    ("[[cat]]", [("cat", A(1 / 1.21))]),
    ("(cat:1.3), dog", [("cat", 1.3), (", dog", 1.0)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", A(1.5 / 1.1)), (" c", 1.5)]),
    ("((a) b:0.5)", [("a", A(0.55)), (" b", 0.5)]),
    ("a (thick:-1.1) handwritten digit 3", [("a ", 1.0), ("thick", -1.1), (" handwritten digit 3", 1.0)]),
    ("(a:+1.25)", [("a", 1.25)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:1.)", [("a", 1.0)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:1.2.3)", [("a:1.2.3", A(1.1))]),  # not a number: text (A1111 itself raises here)
    (r"\(literal\) x", [("(literal) x", 1.0)]),
    (r"\[x\] \\", [("[x] \\", 1.0)]),
    (r"a\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
    ("(unclosed", [("unclosed", A(1.1))]),
    ("[unclosed", [("unclosed", A(1 / 1.1))]),
    ("stray) ]", [("stray) ]", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", None), ("b", 1.0)]),
    ("(a BREAK b)", [("a", A(1.1)), ("BREAK", None), ("b", A(1.1))]),  # brackets don't weight a BREAK
    ("a BREAK, b", [("a", 1.0), ("BREAK", None), (", b", 1.0)]),
    ("BREAKFAST break", [("BREAKFAST break", 1.0)]),
    ("ratio 16:9", [("ratio 16:9", 1.0)]),
    ("(café:1.2) 日本", [("café", 1.2), (" 日本", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), GRAMMAR, ids=[p or "empty" for p, _ in GRAMMAR])
def test_a1111_attention_syntax(prompt, expected):
    assert parse_prompt_weights(prompt) == expected


def test_a_negative_weight_stays_in_its_chunk(tiny):
    tokens = tokenize_prompt(tiny.tokenizer, "a (thick:-1.1) handwritten digit 3")
    thick = tiny.tokenizer("thick", add_special_tokens=False).input_ids
    assert tokens.ids.shape[0] == 1
    assert tokens.ids[0, 2].item() == thick[0] and tokens.weights[0, 2].item() == pytest.approx(-1.1)


def test_a_full_chunk_moves_the_words_after_its_last_comma_to_the_next(tiny):
    """A1111's comma_padding_backtrack (20): a phrase is not cut in two at token 75."""
    tok = tiny.tokenizer
    cat, dog, comma = (tok.convert_tokens_to_ids(t) for t in ("cat</w>", "dog</w>", ",</w>"))
    eos = tok.eos_token_id
    near = tokenize_prompt(tok, "cat " * 60 + ", " + "dog " * 20)  # the comma is 15 tokens from the end
    assert near.ids[0, 1:63].tolist() == [cat] * 60 + [comma, eos]  # the chunk ends at the comma...
    assert near.ids[1, 1:22].tolist() == [dog] * 20 + [eos]  # ...and every dog moves to the next
    far = tokenize_prompt(tok, "cat " * 49 + ", " + "dog " * 40)  # the comma is 26 back: a plain cut
    assert far.ids[0, 1:77].tolist() == [cat] * 49 + [comma] + [dog] * 25 + [eos]


def test_a_comma_at_a_full_chunk_starts_the_next_one(tiny):
    """In A1111 a comma arriving at a full chunk takes the comma branch, not the backtrack."""
    tok = tiny.tokenizer
    cat, dog, comma = (tok.convert_tokens_to_ids(t) for t in ("cat</w>", "dog</w>", ",</w>"))
    tokens = tokenize_prompt(tok, "cat " * 60 + ", " + "dog " * 14 + ", cat")
    assert tokens.ids[0, 1:76].tolist() == [cat] * 60 + [comma] + [dog] * 14
    assert tokens.ids[1, 1:3].tolist() == [comma, cat]


def test_an_embedding_is_never_split_between_chunks(tiny):
    import copy

    from sdlab.embeddings import add_tokens

    pipe = copy.copy(tiny)
    pipe.tokenizer = copy.deepcopy(tiny.tokenizer)
    pipe.text_encoder = copy.deepcopy(tiny.text_encoder)
    ids = add_tokens(pipe, "<t4>", torch.randn(4, 32))
    tokens = tokenize_prompt(pipe.tokenizer, "cat " * 73 + "<t4> dog")  # 2 places left, 4 vectors
    cat = pipe.tokenizer.convert_tokens_to_ids("cat</w>")
    assert tokens.ids[0, 1:75].tolist() == [cat] * 73 + [pipe.tokenizer.eos_token_id]
    assert tokens.ids[1, 1:5].tolist() == ids


@pytest.mark.parametrize(
    ("prompt", "chunks"),
    [("", 1), ("BREAK a", 2), ("a BREAK", 1), ("a BREAK BREAK b", 3), (" ".join(["cat"] * 300), 4)],
)
def test_chunk_counts(tiny, prompt, chunks):
    assert tokenize_prompt(tiny.tokenizer, prompt).ids.shape[0] == chunks


@pytest.mark.parametrize(
    "prompt",
    ["a <t3> handwritten digit 3", "a <t3>, handwritten digit 3", "(<t3>:1.2) handwritten digit 3",
     "a [<t3>] digit", "a <t3>. digit", "<t3>"],
)  # fmt: skip
def test_a_multi_vector_embedding_gives_all_its_vectors_wherever_it_stands(tiny, prompt):
    import copy

    from sdlab.embeddings import add_tokens

    pipe = copy.copy(tiny)
    pipe.tokenizer = copy.deepcopy(tiny.tokenizer)
    pipe.text_encoder = copy.deepcopy(tiny.text_encoder)
    ids = add_tokens(pipe, "<t3>", torch.randn(3, 32))
    row = tokenize_prompt(pipe.tokenizer, prompt).ids[0].tolist()
    start = row.index(ids[0])
    assert row[start : start + 3] == ids and row.count(ids[0]) == 1


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
    assert torch.equal(encode_prompts(tiny.tokenizer, tiny.text_encoder, [prompt]).hidden, expected)


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
    embeds = encode_prompts(tiny.tokenizer, tiny.text_encoder, [prompt, "short"]).hidden
    assert embeds.shape == (2, 77 * tokens.ids.shape[0], 32)


def test_break_starts_a_new_chunk_and_nothing_else_does(tiny):
    tokens = tokenize_prompt(tiny.tokenizer, "a cat BREAK a dog")
    assert tokens.ids.shape[0] == 2
    assert tokens.ids[1, 1:3].tolist() == tiny.tokenizer("a dog", add_special_tokens=False).input_ids


def test_weights_change_only_the_weighted_tokens_direction(tiny):
    plain = encode_prompts(tiny.tokenizer, tiny.text_encoder, ["a red cat"]).hidden
    weighted = encode_prompts(tiny.tokenizer, tiny.text_encoder, ["a (red:1.5) cat"]).hidden
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
