"""`sdlab caption`: the digits captioner reads digits; BLIP runs from a local folder, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.captioning import caption_folder, load_captioner
from sdlab.cli.main import main
from sdlab.digits.data import train_test_split
from sdlab.errors import InputError


def test_caption_command_writes_what_the_digits_captioner_reads(tmp_path, capsys):
    _, test = train_test_split()
    picks = [int(np.flatnonzero(test.labels == d)[0]) for d in (3, 7)]
    for i in picks:
        digit = Image.fromarray(255 - test.images[i])  # dark ink on white paper: read all the same
        digit.convert("RGB").resize((32, 32)).save(tmp_path / f"digit-{test.labels[i]}.png")
    assert main(["caption", str(tmp_path), "--captioner", "digits", "--sidecars"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["digit-3.png", "digit-7.png"]
    assert "3" in rows[0]["text"] and "7" in rows[1]["text"]
    assert (tmp_path / "digit-7.txt").read_text().strip() == rows[1]["text"]
    assert main(["caption", str(tmp_path)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    # an image deleted since: --overwrite captions what is there (it used to fail on the old line naming it)
    (tmp_path / "digit-3.png").unlink()
    (tmp_path / "digit-3.txt").unlink()
    assert main(["caption", str(tmp_path), "--captioner", "digits", "--overwrite"]) == 0, (
        capsys.readouterr().err
    )
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["digit-7.png"]
    with pytest.raises(InputError, match="unknown captioner"):
        load_captioner("gpt")


def test_blip_captioner_runs_a_local_model(tmp_path):
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "handwritten",
        "digit",
        "seven",
        "three",
        "photo",
        "of",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": 32, "width": 32}), BertTokenizer(str(tmp_path / "vocab.txt"))
    )
    text = dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3)  # fmt: skip
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision)).eval()
    folder = tmp_path / "blip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 50, 200 - 60 * i)).save(images / f"{i}.png")
    captions = caption_folder(images, load_captioner(f"blip:{folder}"))
    pictures = [Image.open(images / f"{i}.png").convert("RGB") for i in range(3)]
    with torch.no_grad():
        ids = model.generate(**processor(images=pictures, return_tensors="pt"), max_new_tokens=30)
    expected = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    assert list(captions.values()) == expected
    assert [
        json.loads(line)["text"] for line in (images / "metadata.jsonl").read_text().splitlines()
    ] == expected
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no .safetensors weights"):
        load_captioner(f"blip:{folder}")
