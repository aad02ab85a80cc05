"""Image normalisation: any seed image -> one canonical PNG (RGB, capped pixels).

Every image enters the pipeline through :func:`normalize_image` exactly once (at ingest),
so the bytes stored in the shards, hashed into the prompt id and pushed to the Hub are the
same bytes. Decisions, and why:

- **PNG, lossless, re-encoded once.** Charts and documents are thin lines and small text;
  a second lossy pass would blur exactly what the questions are about. PNG output from
  Pillow carries no timestamp, and we drop all ancillary info (ICC, EXIF, text chunks), so
  the same pixels always give the same bytes, hence the same prompt id. Two encodings of
  one picture (a JPEG and a PNG of it) do *not* collapse: they have different pixels.
- **RGB on white.** VLM processors expect RGB. Alpha is composited on white (charts with
  transparent backgrounds are drawn for white pages; black, which a bare ``convert("RGB")``
  gives, makes dark text unreadable). CMYK goes through Pillow's conversion (Adobe-inverted
  JPEGs are handled by the decoder); ICC profiles are not applied.
- **16-bit and 32-bit grey are rescaled, not clipped.** Pillow's ``convert`` clips
  ``I;16``/``I`` values at 255, which turns most 16-bit scans pure white.
- **Pixel cap with the aspect ratio kept** (LANCZOS, with Pillow's ``reducing_gap`` so a
  huge image is first box-reduced by an integer factor: fast and alias-free).
- **Big images are downscaled, not dropped, when it is safe.** Before decoding we look at
  the header size. JPEGs are asked to decode at 1/2, 1/4 or 1/8 scale (``Image.draft``),
  so a 40-megapixel photo decodes to ~0.6 MP of memory. Whatever still exceeds
  ``max_decode_pixels`` after that is refused with ``image_too_large`` rather than risking
  the worker's memory; Pillow's own decompression-bomb check (raised at open time for
  images over twice ``Image.MAX_IMAGE_PIXELS``) is mapped to the same error. We never
  change Pillow's global ``MAX_IMAGE_PIXELS``: that would be hidden global state.
- **Multi-frame files** (GIF, TIFF) use their first frame; EXIF orientation is applied so
  phone photos of documents are upright.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Default cap on the stored image: 2048*2048. Keeps typical DocVQA scans (~1700x2200,
# 3.7 MP) untouched so small print stays legible; models' processors downscale further.
DEFAULT_MAX_PIXELS = 2048 * 2048
# Refuse to decode more than this many pixels (after JPEG draft reduction). 100 MP of RGB
# is 300 MB per worker at peak; larger images are almost always bombs or scanning errors.
DEFAULT_MAX_DECODE_PIXELS = 100_000_000

# Stable error kinds; they double as the skip reasons the seed adapters count.
MISSING = "missing_image"
CORRUPT = "corrupt_image"
TOO_LARGE = "image_too_large"
OUTSIDE = "image_outside_source"

_EXIF_ORIENTATION = 0x0112
# EXIF orientation value -> the transpose that makes the picture upright (EXIF 2.3 spec).
_T = Image.Transpose
_ORIENTATION_FIX = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}


class ImageError(ValueError):
    """An image that cannot be normalised.

    ``kind`` is a stable key (``missing_image``, ``corrupt_image``, ``image_too_large``);
    ``reason`` a short human string ("empty file", "cannot decode: ...",
    "too large: N px").
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


ImageInput = bytes | bytearray | memoryview | Image.Image | dict | str | os.PathLike


def normalize_image(
    data: ImageInput,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
    base_dir: str | os.PathLike | None = None,
    allow_outside: bool = True,
) -> bytes:
    """Decode ``data`` and return canonical PNG bytes (RGB, at most ``max_pixels``).

    ``data`` may be encoded bytes, a PIL image, a Hugging Face ``Image`` struct
    (``{"bytes": ..., "path": ...}``; bytes win, the path is read when bytes are absent),
    or a file path (relative paths are resolved against ``base_dir``). A PIL image is
    taken as already opened by the caller: the pixel cap applies, the decode limit does not.
    With ``allow_outside=False`` a path must resolve (symlinks followed) inside
    ``base_dir``, and with no ``base_dir`` no path is read at all: a seed record naming
    ``../../x.png``, ``/etc/passwd`` or a symlink out of its folder is refused before
    anything is opened (``image_outside_source``).
    Raises :class:`ImageError` for a missing, empty, undecodable or oversized image.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if isinstance(data, Image.Image):
        img = data
    else:
        img = _open(_read_bytes(data, base_dir, allow_outside), max_pixels, max_decode_pixels)
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
        rgb = _cap_pixels(_to_rgb(img), max_pixels)
        # Rotate last, on the small image: the cap only depends on w*h, which a
        # transpose keeps.
        if orientation in _ORIENTATION_FIX:
            rgb = rgb.transpose(_ORIENTATION_FIX[orientation])
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # decoders fail lazily with arbitrary errors (truncated data...)
        raise ImageError(CORRUPT, f"cannot decode: {type(e).__name__}: {e}") from e
    return _encode_png(rgb)


def image_bytes(image: Any) -> bytes | None:
    """The encoded bytes of an image field, or None when it holds no image.

    A Hugging Face ``Image`` struct gives its bytes, else the file at its ``path`` when
    that is readable; raw bytes are returned as they are. Decoding is left to the
    consumer (an engine reports a corrupt image as that request's error).
    """
    if image is None:
        return None
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return bytes(image["bytes"])
        path = image.get("path")
        return Path(path).read_bytes() if path and Path(path).is_file() else None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    raise TypeError(f"image field holds {type(image).__name__}; expected the {{bytes, path}} struct")


def decode_image(image: ImageInput) -> Image.Image:
    """A fully decoded RGB ``PIL.Image`` from any image field, or :class:`ImageError`.

    Accepts a PIL image, encoded bytes, the HF ``{bytes, path}`` struct or a file path.
    Decoding eagerly (``load()``) makes a truncated or corrupt file fail here, with a
    clear message, instead of deep inside a processor or an engine worker. Unlike
    :func:`normalize_image` nothing is resized or re-encoded: the pixels go to the model
    as stored.
    """
    if image is None:
        raise ImageError(MISSING, "no image")
    if isinstance(image, Image.Image):
        img = image
    else:
        raw = _read_bytes(image, None)
        try:
            img = Image.open(io.BytesIO(raw))
        except Exception as e:  # noqa: BLE001 - any decoder failure means "corrupt"
            raise ImageError(CORRUPT, f"image is not decodable ({type(e).__name__}: {e})") from e
    try:
        img.load()
    except Exception as e:  # noqa: BLE001
        raise ImageError(CORRUPT, f"image is not decodable ({type(e).__name__}: {e})") from e
    if img.width < 1 or img.height < 1:
        raise ImageError(CORRUPT, f"image has an empty size {img.size}")
    return img if img.mode == "RGB" else img.convert("RGB")


def _read_bytes(data: Any, base_dir: str | os.PathLike | None, allow_outside: bool = True) -> bytes:
    if isinstance(data, dict):
        if data.get("bytes") is not None:
            data = data["bytes"]
        elif data.get("path"):
            data = data["path"]
        else:
            raise ImageError(MISSING, "image struct has neither bytes nor path")
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not allow_outside:
            _check_inside(Path(data), path, base_dir)
        if not path.is_file():
            raise ImageError(MISSING, f"no such file: {path}")
        raw = path.read_bytes()
    else:
        raise ImageError(CORRUPT, f"unsupported image value of type {type(data).__name__}")
    if not raw:
        raise ImageError(CORRUPT, "empty file")
    return raw


def _check_inside(given: Path, path: Path, base_dir: str | os.PathLike | None) -> None:
    """Refuse a path that does not resolve inside ``base_dir`` (symlinks followed)."""
    if base_dir is None:
        raise ImageError(OUTSIDE, f"image path {str(given)!r} in a source with no folder to "
                                  "read it from; set allow_outside: true on the source to allow it")
    root = Path(os.path.realpath(base_dir))
    if not Path(os.path.realpath(path)).is_relative_to(root):
        raise ImageError(OUTSIDE, f"image path {str(given)!r} resolves outside the source folder "
                                  f"{root}; set allow_outside: true on the source to allow it")


def _open(raw: bytes, max_pixels: int, max_decode_pixels: int) -> Image.Image:
    """Open and fully decode, refusing oversized images before their pixels are read."""
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as e:
        raise ImageError(TOO_LARGE, f"too large: {e}") from e
    except Exception as e:
        raise ImageError(CORRUPT, f"cannot decode: {type(e).__name__}: {e}") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(CORRUPT, f"cannot decode: zero-sized image {w}x{h}")
    if w * h > max_pixels and img.format == "JPEG":
        # DCT scaling in the decoder: the size it picks is never below the requested one,
        # so the final LANCZOS step still has enough pixels to work with.
        scale = math.sqrt(max_pixels / (w * h))
        img.draft(img.mode, (max(1, int(w * scale)), max(1, int(h * scale))))
    dw, dh = img.size
    if dw * dh > max_decode_pixels:
        raise ImageError(TOO_LARGE, f"too large: {w * h} px (limit {max_decode_pixels})")
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(CORRUPT, f"cannot decode: {type(e).__name__}: {e}") from e
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _grey_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grey -> 8 bit by its nominal range (not by clipping at 255).

    16-bit modes use 0..65535. ``I`` (32-bit int) and ``F`` (float) have no nominal
    range, so we infer the narrowest plausible one: 8-bit, 16-bit ([0,1] for floats),
    else the image's own min..max.
    """
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        amin = float(a.min()) if a.size else 0.0
        amax = float(a.max()) if a.size else 0.0
        if mode == "F" and amin >= 0.0 and amax <= 1.0:
            lo, hi = 0.0, 1.0
        elif amin >= 0.0 and amax <= 255.0:
            lo, hi = 0.0, 255.0
        elif amin >= 0.0 and amax <= 65535.0:
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = amin, max(amax, amin + 1.0)
    out = np.rint((np.clip(a, lo, hi) - lo) * (255.0 / (hi - lo)))
    return out.astype(np.uint8)


def capped_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest (w, h) with the same aspect ratio and w*h <= max_pixels (each side >= 1)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    # Float rounding can leave the product one row over the cap on extreme aspect ratios.
    while w * h > max_pixels and (w > 1 or h > 1):
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def _cap_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    size = capped_size(img.width, img.height, max_pixels)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode_png(img: Image.Image) -> bytes:
    # A fresh image has empty `info`, so no ICC/EXIF/text chunk can leak into the bytes.
    clean = Image.frombytes("RGB", img.size, img.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
