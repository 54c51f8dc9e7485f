"""Captioned image folders: imagefolder metadata.jsonl and kohya .txt sidecars."""

from __future__ import annotations

import codecs
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.datasets import load_pixels, read_folder, write_metadata
from sdlab.errors import InputError


def _image(path, value=128, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def test_metadata_jsonl_and_sidecars_give_captions_and_metadata_wins(tmp_path):
    a, c = _image(tmp_path / "a.png"), _image(tmp_path / "c.png")
    _image(tmp_path / "sub" / "b.jpg")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "from metadata"}) + "\n"
        + json.dumps({"file_name": "sub/b.jpg", "caption": "column named caption"}) + "\n"
    )  # fmt: skip
    a.with_suffix(".txt").write_text("sidecar loses to metadata\n")
    c.with_suffix(".txt").write_text("  from a sidecar \n")
    items = {item.path.name: item.caption for item in read_folder(tmp_path)}
    assert items == {"a.png": "from metadata", "b.jpg": "column named caption", "c.png": "from a sidecar"}


def test_missing_caption_unreadable_image_and_bad_metadata_are_named(tmp_path):
    _image(tmp_path / "a.png")
    with pytest.raises(InputError, match="a.png"):
        read_folder(tmp_path)
    assert read_folder(tmp_path, require_captions=False)[0].caption is None
    (tmp_path / "a.txt").write_text("ok")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "broken.txt").write_text("ok")
    with pytest.raises(InputError, match="broken.png"):
        read_folder(tmp_path)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(InputError, match="line 1 names gone.png"):
        read_folder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(InputError, match="line 1"):
        read_folder(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_folder(tmp_path / "nowhere")


def test_write_metadata_round_trips_and_pixels_are_centre_cropped(tmp_path):
    paths = [_image(tmp_path / f"{i}.png", value=40 * i) for i in range(3)]
    write_metadata(tmp_path, {p: f"caption {i}" for i, p in enumerate(paths)}, sidecars=True)
    items = read_folder(tmp_path)
    assert [i.caption for i in items] == ["caption 0", "caption 1", "caption 2"]
    assert (tmp_path / "2.txt").read_text() == "caption 2\n"
    pixels = load_pixels(items, 16)
    assert pixels.shape == (3, 3, 16, 16)
    expected = torch.tensor([40.0 * i / 127.5 - 1 for i in range(3)])
    assert torch.allclose(pixels.mean(dim=(1, 2, 3)), expected, atol=1e-5)
    assert np.isclose(float(pixels.min()), -1.0)


def _white_png(folder, name="a.png"):
    Image.new("RGB", (8, 8), "white").save(folder / name)


@pytest.mark.parametrize(
    ("data", "caption"),
    [
        (
            "a handwritten digit 3".encode("utf-16"),
            "a handwritten digit 3",
        ),  # Notepad's "Unicode": UTF-16 LE + BOM
        (codecs.BOM_UTF16_BE + "a digit".encode("utf-16-be"), "a digit"),
        ("a digit ✓".encode("utf-8-sig"), "a digit ✓"),
        ("a digit".encode("utf-32"), "a digit"),
        (b"a digit\r\n", "a digit"),
        (b"\r\n  first line  \r\nsecond line\r\n", "first line"),  # kohya: the first non-empty line
        (b"", ""),
        (b"   \n", ""),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-8-bom", "utf-32", "crlf", "two-lines", "empty", "blank"],
)
def test_sidecar_encodings_and_line_ends(tmp_path, data, caption):
    _white_png(tmp_path)
    (tmp_path / "a.txt").write_bytes(data)
    assert read_folder(tmp_path)[0].caption == caption


@pytest.mark.parametrize(
    ("lines", "result"),
    [
        ('{"file_name": "a.png", "text": "a digit"}\r\n'.encode("utf-8-sig"), "a digit"),
        ('{"file_name": "a.png", "text": "a digit"}\n'.encode("utf-16"), "a digit"),
        (b'{"file_name": "a.png", "text": ""}\n', ""),
        (
            '{"file_name": "a.png", "text": "one\u2028two"}\n'.encode(),
            "one\u2028two",
        ),  # raw U+2028 is valid JSON
        (b'{"file_name": "a.png", "text": null}\n', "line 1: the text is null (null), not text"),
        (b'\n{"file_name": "a.png", "caption": 3}\n', "line 2: the caption is int (3), not text"),
        (
            b'{"file_name": "a.png", "prompt": ["a", "b"]}\n',
            'line 1: the prompt is list (["a", "b"]), not text',
        ),
        (b'{"file_name": "a.png", "text": "caf\xe9"}\n', "is not UTF-8 text (a bad byte at position"),
    ],
    ids=["utf-8-bom-crlf", "utf-16", "empty", "u2028", "null", "number", "list", "latin-1"],
)
def test_metadata_captions_are_decoded_or_refused_by_file_and_line(tmp_path, lines, result):
    _white_png(tmp_path)
    (tmp_path / "metadata.jsonl").write_bytes(lines)
    if result.startswith(("line", "is not")):
        with pytest.raises(InputError, match=re.escape(result)) as info:
            read_folder(tmp_path)
        assert "metadata.jsonl" in str(info.value)
    else:
        assert read_folder(tmp_path)[0].caption == result


def test_a_sidecar_in_another_encoding_is_named(tmp_path):
    _white_png(tmp_path)
    (tmp_path / "a.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match=r"a\.txt is not UTF-8 text .*save it as UTF-8"):
        read_folder(tmp_path)


def test_a_grid_sdlab_wrote_beside_its_images_is_no_training_image(tmp_path):
    """`sdlab generate -n 2 -o out.png` writes out-0.png, out-1.png and out-grid.png; a dataset (and `sdlab
    caption`) reads the two images, not the grid."""
    from sdlab.outputs import write_pngs

    images = [Image.new("RGB", (8, 8), (i * 90, 0, 0)) for i in range(2)]
    recipes = [{"prompt": "a", "negative_prompt": "", "seed": i} for i in range(2)]
    written = write_pngs(images, recipes, tmp_path / "out.png", ["a\nSteps: 1, Seed: 0, Size: 8x8"] * 2)
    assert [p.name for p in written] == ["out-0.png", "out-1.png", "out-grid.png"]
    assert [item.path.name for item in read_folder(tmp_path, require_captions=False)] == [
        "out-0.png",
        "out-1.png",
    ]


# `sdlab make-digits`: the teaching recipes' data, written by sdlab itself


def test_make_digits_writes_a_captioned_folder_the_trainers_read(tmp_path):
    import numpy as np
    from PIL import Image

    from sdlab.datasets import read_folder
    from sdlab.digits.data import train_test_split
    from sdlab.digits.folders import LINE_COLS, LINE_ROWS, make_digits_folder

    paths = make_digits_folder(tmp_path / "under", count=12, look="underline", seed=3)
    items = read_folder(tmp_path / "under")
    assert [i.path.name for i in items] == [p.name for p in paths] and len(items) == 12
    assert all(i.caption.startswith("a ") and "handwritten digit" in i.caption for i in items)
    gray = np.stack([np.asarray(Image.open(p).convert("L"))[2:-2, 2:-2] for p in paths]) / 255
    assert gray.shape == (12, 28, 28) and (gray[:, LINE_ROWS, LINE_COLS] == 1).all()  # the line is drawn
    # the token form names each digit by its own label, and only the training split is drawn from
    make_digits_folder(tmp_path / "fours", count=5, digit=4, look="tiny", token="<tiny>")
    assert {i.caption for i in read_folder(tmp_path / "fours")} == {"a <tiny> handwritten digit 4"}
    train, test = train_test_split()
    written = (np.asarray(Image.open(paths[0]).convert("L"))[2:-2, 2:-2] / 255)[:26]
    assert not any(np.array_equal(written, t[:26] / 255) for t in test.images)


def test_make_digits_refuses_in_one_sentence(tmp_path, capsys):
    from sdlab.cli.main import main

    assert main(["make-digits", str(tmp_path / "a"), "--count", "3", "--no-captions"]) == 0
    assert not (tmp_path / "a" / "metadata.jsonl").exists()
    for argv, words in (
        ([str(tmp_path / "a"), "--count", "3"], "already holds images"),
        ([str(tmp_path / "b"), "--look", "fancy"], "unknown look 'fancy'"),
        ([str(tmp_path / "c"), "--digit", "4", "--count", "401"], "--count must be 1 to 400"),
        ([str(tmp_path / "d"), "--digit", "12"], "--digit must be 0 to 9"),
    ):
        capsys.readouterr()
        assert main(["make-digits", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
