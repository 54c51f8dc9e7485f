"""Reading and writing images safely: every bad file is refused by name, every mode becomes RGB.

A pipeline wants a 3-channel 8-bit RGB image. Files in the wild are 16-bit, CMYK, palette with
transparency, rotated by EXIF, truncated by a failed download or built to exhaust memory
(decompression bombs). `load_image` turns each of these into RGB or into an `InputError`.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from sdlab.atomic import atomic_path
from sdlab.errors import InputError

# Formats a user may hand us. Pillow can open more (EPS runs Ghostscript, others are rarely
# maintained), so we don't let a file's contents pick the decoder from the whole list.
FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM", "TGA")
_FORMAT_NAMES = "PNG, JPEG, WebP, AVIF, GIF, BMP, TIFF, PPM or TGA"


def _readable_formats() -> list[str]:
    """`FORMATS` that this Pillow can open (AVIF came with Pillow 11.2; older ones open the rest)."""
    Image.init()
    return [name for name in FORMATS if name in Image.OPEN]


# Modes PNG can hold as they are; anything else is converted to RGB before saving.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}

Source = str | os.PathLike | Image.Image | bytes  # bytes: an encoded file, e.g. from an HTTP request

GRID_CHUNK = "sdlab-grid"  # a PNG text chunk marking a grid of N images (the value), not an image of its own
MAX_PIXELS = 8192 * 8192  # 67 megapixels (200 MB as RGB): far beyond any SD resolution

# Output formats by suffix. JPEG and WebP carry the parameters as A1111 writes them there: in the EXIF
# UserComment, "UNICODE\0" then UTF-16-BE (piexif's `UserComment.dump(text, encoding="unicode")`).
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_COMMENT_CODES = {b"UNICODE\0": "utf-16-be", b"ASCII\0\0\0": "ascii", b"\0" * 8: "utf-8"}


def load_image(source: Source, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `source` (a path or a PIL image) and return it as an 8-bit, 3-channel RGB image.

    `source` may also be the bytes of an encoded file (an upload): they pass the same checks as a
    file. `what` names the image's role in error messages ("init image", "mask"). Images with more
    than `max_pixels` pixels are refused from their header, before any pixel is decoded.
    Transparency is composited onto white.
    """
    image, label = _read(source, what, max_pixels)
    return _to_rgb(image, label)


def load_mask(source: Source, *, size: tuple[int, int] | None = None) -> Image.Image:
    """Open an inpainting mask as mode "L": white is repainted, black is kept (as diffusers and A1111).

    A mask with transparency is its alpha channel: opaque pixels are repainted, transparent ones
    kept. That is how A1111's `create_binary_mask` reads RGBA masks, the kind image editors export;
    sdlab reads LA, PA and palette or grey images with a transparent colour the same way (A1111 would
    take their luminance). An opaque mask is its luminance, as in A1111 and diffusers.
    `size` is the init image's (width, height): a mask of another size is resized to it (Lanczos), as A1111
    resizes a mask with its init image ("Just resize", `images.resize_image` mode 0).
    """
    image, label = _read(source, "mask", MAX_PIXELS)
    alpha = _rgba(image).getchannel("A") if _has_alpha(image) else None
    if alpha is not None and alpha.getextrema() != (255, 255):
        mask = alpha
    else:
        mask = _to_rgb(image, label).convert("L")
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.LANCZOS)
    return mask


def _read(source: Source, what: str, max_pixels: int) -> tuple[Image.Image, str]:
    """`source` decoded (EXIF orientation applied) in its own mode, and its label for messages."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, what, max_pixels)
        return _decode(source, what), what
    if isinstance(source, bytes):
        with _open_checked(source, what, max_pixels) as image:
            return _decode(image, what), what
    path = Path(source)
    label = f"{what} '{path}'"
    with _open_checked(path, what, max_pixels) as image:
        return _decode(image, label), label


def save_png(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    parameters: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write `image` as a PNG with text chunks, atomically, creating parent folders.

    `parameters` is A1111's infotext chunk (see `sdlab.metadata.format_parameters`); `extra` adds
    more chunks, e.g. {"sdlab": json}. The file appears whole or not at all (`sdlab.atomic`), so a
    crash never leaves a half-written PNG.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"output path '{path}' must end in .png; save_png writes PNG files only.")
    return _write(path, lambda: png_bytes(image, parameters=parameters, extra=extra))


def _write(path: Path, encode: Callable[[], bytes]) -> Path:
    """The bytes `encode()` makes, to `path`, whole or not at all; `InputError` naming the path when they
    cannot be made or written (a full disk may fail the encoder too)."""
    try:
        data = encode()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # open() leaves permissions to the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except ValueError as e:  # the encoder's limits: WebP sides up to 16383, JPEG EXIF up to 64 KB
        raise InputError(f"cannot write '{path}': {e}; write a PNG, or fewer or smaller images") from e
    except OSError as e:
        reason = e.strerror or str(e)
        raise InputError(
            f"cannot write '{path}' ({reason}); check that its folder is writable and has space."
        ) from e
    return path


def png_bytes(
    image: Image.Image, *, parameters: str | None = None, extra: dict[str, str] | None = None
) -> bytes:
    """`image` encoded as a PNG with the same text chunks `save_png` writes, without touching the disk."""
    image, info = _png_parts(image, parameters, extra)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def image_bytes(
    image: Image.Image, fmt: str, *, parameters: str | None = None, extra: dict[str, str] | None = None
) -> bytes:
    """`image` encoded as `fmt` ("PNG", "JPEG" or "WEBP") with its parameters: PNG text chunks (`extra` too),
    or for JPEG and WebP (quality 95) A1111's EXIF UserComment, which holds `parameters` alone."""
    if fmt == "PNG":
        return png_bytes(image, parameters=parameters, extra=extra)
    exif = _user_comment_exif(parameters) if parameters is not None else b""
    buffer = io.BytesIO()
    _to_rgb(image, "image").save(buffer, format=fmt, quality=95, exif=exif)
    return buffer.getvalue()


def _user_comment_exif(text: str) -> bytes:
    """EXIF with one UserComment of type UNDEFINED, "UNICODE\0" + UTF-16-BE, as piexif writes A1111's (Pillow
    would store bytes as BYTE, which piexif does not read as a comment): a big-endian TIFF whose IFD0 points
    to an Exif IFD holding the comment, its bytes after it."""
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    exif_ifd = 8 + 2 + 12 + 4  # after the header and IFD0 (one entry, then the next-IFD offset)
    data = exif_ifd + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">HHHII", 1, _EXIF_IFD, 4, 1, exif_ifd) + struct.pack(">I", 0)  # LONG pointer
    tiff += struct.pack(">HHHII", 1, _USER_COMMENT, 7, len(comment), data) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff + comment


def save_image(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    parameters: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write `image` as PNG, JPEG or WebP by the path's suffix (`OUTPUT_FORMATS`), with its parameters
    (`image_bytes`), atomically, creating parent folders. `InputError` for another suffix."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"output path '{path}' must end in .png, .jpg, .jpeg or .webp")
    if fmt == "PNG":
        return save_png(image, path, parameters=parameters, extra=extra)
    return _write(path, lambda: image_bytes(image, fmt, parameters=parameters))


def read_image_text(source: str | os.PathLike | bytes, *, what: str = "image") -> dict[str, str]:
    """The generation parameters an image carries: a PNG's text chunks ({"parameters": ..., "sdlab": ...}),
    or a JPEG's or WebP's EXIF UserComment as {"parameters": ...} (A1111 saves them so; `images.py`'s
    `read_info_from_image`). {} where there are none; `InputError` for another format or a broken file."""
    source = source if isinstance(source, bytes) else Path(source)
    label = what if isinstance(source, bytes) else f"'{source}'"
    with _open_checked(source, what, MAX_PIXELS) as image:
        if image.format == "PNG":
            return read_png_text(source, what=what)
        if image.format not in ("JPEG", "WEBP"):
            raise InputError(f"{label} is a {image.format} file; parameters are read from PNG, JPEG and WebP")
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if not isinstance(comment, bytes) or not comment:
        return {}
    encoding = _COMMENT_CODES.get(comment[:8])
    try:
        text = comment[8:].decode(encoding) if encoding else comment.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{label}'s EXIF UserComment is not text ({encoding or 'no character code'})"
        ) from None
    return {"parameters": text.rstrip("\0")}


def read_png_text(source: str | os.PathLike | bytes, *, what: str = "PNG") -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file or of its bytes, e.g. {"parameters": ...}."""
    source = source if isinstance(source, bytes) else Path(source)
    label = what if isinstance(source, bytes) else f"'{source}'"
    with _open_checked(source, what, MAX_PIXELS) as image:
        if image.format != "PNG":
            raise InputError(f"{label} is a {image.format} file, not a PNG; PNG text chunks need a PNG.")
        try:
            image.load()  # chunks after the image data are only read once the pixels are
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputError(f"{label} is truncated or corrupt ({e}); re-export it.") from e
        return dict(image.text)


def make_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile same-sized images into one RGB image, row by row; `cols` defaults to ceil(sqrt(n))."""
    if not images:
        raise InputError("make_grid got no images; give at least one.")
    n = len(images)
    cols = math.ceil(math.sqrt(n)) if cols is None else cols
    if not isinstance(cols, int) or cols < 1:
        raise InputError(f"cols is {cols!r}; it must be a positive integer.")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    w, h = images[0].size
    for i, image in enumerate(images):
        if image.size != (w, h):
            iw, ih = image.size
            raise InputError(f"image {i} is {iw}x{ih} but image 0 is {w}x{h}; a grid needs one size.")
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(_to_rgb(image, f"image {i}"), ((i % cols) * w, (i // cols) * h))
    return grid


def _png_parts(
    image: Image.Image, parameters: str | None, extra: dict[str, str] | None
) -> tuple[Image.Image, PngInfo]:
    """The image in a mode PNG can hold, and its text chunks (A1111's `parameters` first)."""
    chunks = {"parameters": parameters} if parameters is not None else {}
    chunks.update(extra or {})
    info = PngInfo()
    for key, value in chunks.items():
        # PNG keywords are 1-79 Latin-1 characters; we keep to printable ASCII, which every reader takes.
        if not 1 <= len(key) <= 79 or not key.isprintable() or not key.isascii():
            raise InputError(f"PNG text key {key!r} is invalid; use 1 to 79 printable ASCII characters.")
        # Pillow writes iTXt (UTF-8) when Latin-1 can't hold it; sdlab's own chunks (the recipe, which repeats
        # the prompts) are compressed (zTXt), A1111's `parameters` stays plain text for every reader
        info.add_text(key, str(value), zip=key != "parameters")
    if image.mode not in _PNG_MODES:
        image = _to_rgb(image, "image to save")
    return image, info


def _decode(image: Image.Image, label: str) -> Image.Image:
    try:
        image.load()  # decode now, so a truncated or corrupt file fails here, by name
        image = ImageOps.exif_transpose(image)  # phones store pixels sideways plus an orientation tag
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{label} is truncated or corrupt ({e}); re-export or re-download it.") from e
    return image


@contextmanager
def _open_checked(source: Path | bytes, what: str, max_pixels: int) -> Iterator[Image.Image]:
    """`Image.open` with every refusal a user can hit turned into an `InputError` naming the file.

    Only the header is read: the caller decodes (`.load()`) once the pixel count is known to be safe.
    """
    if isinstance(source, bytes):
        label, file = what, io.BytesIO(source)
        if not source:
            raise InputError(f"{label} is empty (0 bytes); give a valid {_FORMAT_NAMES} file.")
    else:
        label, file = f"{what} '{source}'", source
        if not source.exists():
            raise InputError(f"{label} does not exist; give the path of a {_FORMAT_NAMES} file.")
        if source.is_dir():
            raise InputError(f"{label} is a folder; give the path of a {_FORMAT_NAMES} file.")
        if source.stat().st_size == 0:
            raise InputError(f"{label} is empty (0 bytes); give a valid {_FORMAT_NAMES} file.")
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse both.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file, formats=_readable_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{label} is refused as a decompression bomb ({e}); downscale it first.") from e
    except UnidentifiedImageError as e:
        raise InputError(f"{label} is not an image we can read; give a {_FORMAT_NAMES} file.") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{label} cannot be read ({e}); give a valid {_FORMAT_NAMES} file.") from e
    with image:
        _check_pixels(image.size, label, max_pixels)
        yield image


def check_image(source: Source, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) of an encoded image (a path or the bytes of a file), read from its header only;
    `InputError` as `load_image` for a bomb, a file that is not an image, or more than `max_pixels` pixels."""
    with _open_checked(source if isinstance(source, bytes) else Path(source), what, max_pixels) as image:
        return image.size


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise InputError(f"{label} is {w}x{h}; an image needs at least one pixel.")
    if w * h > max_pixels:
        raise InputError(
            f"{label} is {w}x{h} = {w * h:,} pixels, more than the {max_pixels:,} allowed; "
            "downscale it or raise max_pixels."
        )


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if _has_alpha(image):
        rgba = _rgba(image)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX
    except ValueError as e:
        raise InputError(f"{label} has pixel mode {mode}, which we cannot convert to RGB.") from e


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info


def _rgba(image: Image.Image) -> Image.Image:
    return (image.convert("LA") if image.mode == "La" else image).convert("RGBA")  # no direct La -> RGBA


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth single-channel array to 0..255, keeping proportions (never clipping)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        scaled = a / 257  # 65535 / 257 == 255 exactly: the 16-bit range onto the 8-bit one
    elif mode == "I" and lo >= 0 and hi <= 255:
        scaled = a  # 8-bit data widened to 32-bit (e.g. L.convert("I"))
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255  # the 0..1 convention of float images
    elif mode == "F" and lo >= 0 and hi <= 255:
        scaled = a
    else:  # signed or wider than 16 bits: stretch the values present onto 0..255
        scaled = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
