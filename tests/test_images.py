"""sdlab.images: bad files refused by name, every mode converted to 3-channel RGB, PNGs written atomically."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdlab.errors import InputError
from sdlab.images import MAX_PIXELS, load_image, load_mask, make_grid, read_png_text, save_png


def rgb(image: Image.Image) -> np.ndarray:
    """The pixels as an (h, w, 3) array, checking the image really is 3-channel RGB."""
    assert image.mode == "RGB"
    a = np.asarray(image)
    assert a.shape == (image.height, image.width, 3)
    return a


def noise_image(size=(64, 64)) -> Image.Image:
    """Random pixels, so the encoded file is large and cutting it lands inside the image data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))


def png_header_only(path, width: int, height: int) -> None:
    """A PNG claiming width x height 1-bit pixels, with a tiny image-data chunk: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# --- refusals ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="init image .*nope.png.* does not exist"):
        load_image(tmp_path / "nope.png", what="init image")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png.* is empty"):
        load_image(tmp_path / "empty.png")


def test_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


def test_garbage_bytes(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all\n" * 20)
    with pytest.raises(InputError, match="garbage.png.* is not an image"):
        load_image(tmp_path / "garbage.png")


def test_formats_outside_the_allowlist_are_refused(tmp_path):
    # EPS is decoded by running Ghostscript; a user's file must not choose that decoder.
    (tmp_path / "x.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(InputError, match="x.eps.* is not an image"):
        load_image(tmp_path / "x.eps")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    noise_image().save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=f"cut.{fmt.lower()}.* truncated or corrupt"):
        load_image(path)


def test_decompression_bomb_refused_from_header(tmp_path):
    # Just over the default limit; the pixel data is a few bytes, so decoding it would fail
    # differently: the message proves we refused before decoding.
    path = tmp_path / "bomb.png"
    png_header_only(path, 8193, 8192)
    assert MAX_PIXELS < 8193 * 8192
    with pytest.raises(InputError, match=r"bomb.png.* is 8193x8192 = 67,117,056 pixels, more than"):
        load_image(path)
    png_header_only(path, 8192, 8192)  # exactly at the limit: passes the check, then fails decoding
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("side", [12_000, 20_000])  # past Pillow's warning, past Pillow's error
def test_pillow_bomb_warning_and_error_become_input_error(tmp_path, side):
    path = tmp_path / "huge.png"
    png_header_only(path, side, side)
    with pytest.raises(InputError, match="huge.png.* decompression bomb"):
        load_image(path, max_pixels=10**12)


def test_small_max_pixels_on_a_real_image(tmp_path):
    noise_image((100, 100)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError, match="a.png.* is 100x100 = 10,000 pixels, more than the 9,999"):
        load_image(tmp_path / "a.png", max_pixels=9_999)
    with pytest.raises(InputError, match="image is 100x100"):
        load_image(noise_image((100, 100)), max_pixels=9_999)


# --- conversions ------------------------------------------------------------------------------


def test_rgba_transparent_becomes_white_and_opaque_keeps_colour(tmp_path):
    image = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # transparent red
    image.putpixel((0, 0), (10, 20, 30, 255))
    image.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red over white
    image.save(tmp_path / "a.png")
    a = rgb(load_image(tmp_path / "a.png"))
    assert a[1, 3].tolist() == [255, 255, 255]
    assert a[0, 0].tolist() == [10, 20, 30]
    assert a[0, 1].tolist() == pytest.approx([255, 127, 127], abs=1)


def test_la_and_palette_transparency_become_white(tmp_path):
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((0, 0), (50, 255))
    assert rgb(load_image(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]

    p = Image.new("P", (2, 1), 1)
    p.putpalette([0, 0, 255] + [255, 0, 0] + [0, 0, 0] * 254)
    p.putpixel((0, 0), 0)
    p.save(tmp_path / "p.png", transparency=1)  # palette index 1 (red) is transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert rgb(load_image(tmp_path / "p.png")).tolist() == [[[0, 0, 255], [255, 255, 255]]]


def test_cmyk_cyan(tmp_path):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert rgb(load_image(tmp_path / "c.jpg"))[4, 4].tolist() == pytest.approx([0, 255, 255], abs=3)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = [0, 257, 1000, 32896, 50000, 65535]
    expected = [0, 1, 4, 128, 195, 255]  # round(v / 257)
    Image.fromarray(np.array([values], np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # Pillow < 10.1 opens it as "I"
    assert rgb(load_image(tmp_path / "g16.png"))[0, :, 0].tolist() == expected

    big_endian = Image.frombytes("I;16B", (6, 1), np.array(values, ">u2").tobytes())
    assert rgb(load_image(big_endian))[0, :, 1].tolist() == expected
    as_int32 = Image.fromarray(np.array([values], np.int32))
    assert as_int32.mode == "I"
    assert rgb(load_image(as_int32))[0, :, 2].tolist() == expected


def test_mode_i_and_f_edge_ranges():
    eight_bit_in_i = Image.fromarray(np.array([[0, 100, 255]], np.uint8)).convert("I")
    assert rgb(load_image(eight_bit_in_i))[0, :, 0].tolist() == [0, 100, 255]
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert rgb(load_image(unit_float))[0, :, 0].tolist() == [0, 128, 255]
    wide_float = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], np.float32))
    assert rgb(load_image(wide_float))[0, :, 0].tolist() == [0, 64, 255]


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_every_mode_comes_out_rgb(mode):
    assert rgb(load_image(Image.new(mode, (3, 2)))).shape == (2, 3, 3)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "black")
    image.paste((255, 0, 0), (0, 0, 4, 4))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be rotated 90 degrees clockwise
    image.save(tmp_path / "phone.png", exif=exif)
    a = rgb(load_image(tmp_path / "phone.png"))
    assert a.shape == (40, 20, 3)  # width and height swapped
    assert a[1, 18].tolist() == [255, 0, 0]  # top-left went to top-right
    assert a[1, 1].tolist() == [0, 0, 0]


# --- masks ------------------------------------------------------------------------------------


def _square_mask(mode: str) -> Image.Image:
    """A 32x32 mask whose middle 16x16 square is to be repainted, as an editor of `mode` would export it."""
    if mode == "RGBA":  # transparent background, opaque white square
        image = Image.new(mode, (32, 32), (0, 0, 0, 0))
        image.paste((255, 255, 255, 255), (8, 8, 24, 24))
    elif mode == "LA":  # black everywhere: only the alpha tells the square (luminance would say 0 %)
        image = Image.new(mode, (32, 32), (0, 0))
        image.paste((0, 255), (8, 8, 24, 24))
    elif mode == "PA":  # a palette of two blacks, the background's transparent: only alpha tells
        image = Image.new("P", (32, 32), 0)
        image.putpalette([0, 0, 0, 0, 0, 0])
        image.paste(1, (8, 8, 24, 24))
        image.info["transparency"] = 0
    elif mode == "RGBA-opaque":  # alpha everywhere 255: its luminance counts
        image = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
        image.paste((255, 255, 255, 255), (8, 8, 24, 24))
    elif mode == "I;16":  # 16-bit grey: white is 65535
        image = Image.new("I;16", (32, 32), 0)
        image.paste(65535, (8, 8, 24, 24))
    else:  # opaque: white square on black
        image = Image.new("L", (32, 32), 0)
        image.paste(255, (8, 8, 24, 24))
        image = image.convert(mode)
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBA-opaque", "RGB", "L", "1", "I;16", "CMYK"])
def test_masks_use_alpha_when_transparent_and_luminance_when_opaque(tmp_path, mode):
    """Issue 11: an editor's RGBA mask (transparent background, opaque square) repaints the square
    only (25 % of the image), as A1111's create_binary_mask reads it; an opaque mask is its luminance."""
    image = _square_mask(mode)
    path = tmp_path / ("m.tiff" if mode == "CMYK" else "m.png")
    image.save(path)
    for source in (path, path.read_bytes(), image):
        mask = np.asarray(load_mask(source, size=(32, 32))) > 127
        assert mask.mean() == 0.25 and mask[8:24, 8:24].all()


def test_mask_is_l_and_resized_to_the_init_image_as_a1111_does(tmp_path):
    mask = Image.new("RGBA", (8, 4), (0, 0, 0, 0))
    mask.putpixel((0, 0), (0, 0, 0, 255))  # opaque: repaint; transparent: keep
    mask.save(tmp_path / "m.png")
    loaded = load_mask(tmp_path / "m.png", size=(8, 4))
    assert loaded.mode == "L"
    assert loaded.getpixel((0, 0)) == 255 and loaded.getpixel((1, 0)) == 0
    resized = load_mask(tmp_path / "m.png", size=(16, 8))  # A1111's "Just resize" (Lanczos), issue 21
    assert resized.size == (16, 8) and resized.getpixel((0, 0)) > 200 and resized.getpixel((15, 7)) == 0
    with pytest.raises(InputError, match="mask .*gone.png.* does not exist"):
        load_mask(tmp_path / "gone.png")


# --- saving and PNG text ----------------------------------------------------------------------


def test_save_png_text_chunks_round_trip(tmp_path):
    parameters = "猫, a café\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1"
    path = save_png(
        noise_image((8, 8)),
        tmp_path / "out" / "deep" / "a.png",
        parameters=parameters,
        extra={"sdlab": '{"seed": 1}'},
    )
    assert path == tmp_path / "out" / "deep" / "a.png"
    assert read_png_text(path) == {"parameters": parameters, "sdlab": '{"seed": 1}'}
    assert rgb(load_image(path)).tolist() == rgb(noise_image((8, 8))).tolist()


def test_save_png_replaces_atomically_with_normal_permissions(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old contents")
    save_png(Image.new("RGB", (4, 4), "red"), target, parameters="x")
    assert rgb(load_image(target))[0, 0].tolist() == [255, 0, 0]
    (tmp_path / "ref").write_bytes(b"")  # a file created the ordinary way, under the same umask
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(tmp_path / "ref").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "ref"]


def test_failed_save_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    save_png(Image.new("RGB", (4, 4), "blue"), target)
    before = target.read_bytes()

    def crash(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(InputError, match=r"cannot write .*a.png. \(No space left"):
        save_png(Image.new("RGB", (4, 4), "red"), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_save_png_refuses_other_extensions(tmp_path):
    with pytest.raises(InputError, match="out.jpg.* must end in .png"):
        save_png(Image.new("RGB", (2, 2)), tmp_path / "out.jpg")


def test_read_png_text_refusals(tmp_path):
    with pytest.raises(InputError, match="missing.png.* does not exist"):
        read_png_text(tmp_path / "missing.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    with pytest.raises(InputError, match="photo.jpg.* is a JPEG file, not a PNG"):
        read_png_text(tmp_path / "photo.jpg")
    assert read_png_text(save_png(Image.new("RGB", (2, 2)), tmp_path / "plain.png")) == {}


# --- grids ------------------------------------------------------------------------------------


def test_make_grid_layout_and_pixels():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 100, 0)]
    tiles = [Image.new("RGB", (8, 6), c) for c in colours]
    grid = make_grid(tiles, cols=3)
    a = rgb(grid)
    assert grid.size == (24, 12)
    for i, colour in enumerate(colours):
        assert a[(i // 3) * 6 + 3, (i % 3) * 8 + 4].tolist() == list(colour)
    assert a[9, 20].tolist() == [255, 255, 255]  # the empty sixth cell
    assert make_grid(tiles[:4]).size == (16, 12)  # near-square default: 2 x 2
    assert make_grid(tiles[:2], cols=5).size == (16, 6)  # never wider than the images


def test_make_grid_refusals():
    with pytest.raises(InputError, match="no images"):
        make_grid([])
    with pytest.raises(InputError, match="image 1 is 4x4 but image 0 is 8x8"):
        make_grid([Image.new("RGB", (8, 8)), Image.new("RGB", (4, 4))])
    with pytest.raises(InputError, match="cols is 0"):
        make_grid([Image.new("RGB", (8, 8))], cols=0)


def test_an_encoder_limit_is_one_sentence(tmp_path):
    """WebP holds sides up to 16383 pixels: a wider grid is refused by name, not a traceback after the run."""
    from sdlab.images import save_image

    with pytest.raises(InputError, match=r"cannot write .*wide.webp.*write a PNG"):
        save_image(Image.new("RGB", (16384, 8)), tmp_path / "wide.webp", parameters="a cat")
