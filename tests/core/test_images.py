"""pipeline.core.images.normalize_image: RGB, pixel cap, one deterministic PNG, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pipeline.core.images import (
    CORRUPT,
    MISSING,
    OUTSIDE,
    TOO_LARGE,
    ImageError,
    capped_size,
    normalize_image,
)
from tests.fixtures_datasets import (
    chart_image,
    cmyk_jpeg,
    corrupt_bytes,
    encode,
    gray16_png,
    png_header_only,
    solid_jpeg,
    solid_png,
    truncated_png,
)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def test_rgb_png_is_lossless_and_png():
    src = chart_image(1, (40, 30))
    out = decode(normalize_image(encode(src), 10_000))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert np.array_equal(np.asarray(out), np.asarray(src))


def test_same_pixels_give_same_bytes_whatever_the_input_form(tmp_path):
    src = chart_image(2)
    data = encode(src)
    path = tmp_path / "chart.png"
    path.write_bytes(data)
    forms = [data, bytearray(data), src, {"bytes": data, "path": None},
             {"bytes": None, "path": str(path)}, str(path), path,
             {"bytes": None, "path": "chart.png"}]
    outs = {normalize_image(f, 10_000, base_dir=tmp_path) for f in forms}
    assert len(outs) == 1
    # ...and metadata (text chunks, ICC profile) never reaches the output bytes.
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "something else")
    with_meta = encode(src, pnginfo=info, icc_profile=b"\x00" * 128)
    assert with_meta != data
    assert normalize_image(with_meta, 10_000) in outs
    out = normalize_image(data, 10_000)
    assert b"tEXt" not in out and b"iCCP" not in out


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    out = decode(normalize_image(encode(rgba), 100))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert out.getpixel((1, 0)) == (255, 0, 0)
    r, g, b = out.getpixel((2, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1

    la = Image.new("LA", (2, 2), (0, 0))
    assert decode(normalize_image(encode(la), 100)).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_and_plain_palette():
    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.putpixel((2, 0), 1)
    plain = decode(normalize_image(encode(p), 100))
    assert plain.getpixel((0, 0)) == (0, 0, 0) and plain.getpixel((1, 0)) == (0, 255, 0)
    transparent = decode(normalize_image(encode(p, transparency=0), 100))
    assert transparent.getpixel((0, 0)) == (255, 255, 255)
    assert transparent.getpixel((1, 0)) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb():
    r, g, b = decode(normalize_image(cmyk_jpeg(), 10_000)).getpixel((5, 5))
    assert r > 240 and g < 15 and b < 15  # CMYK (0,255,255,0) is red


def test_16bit_grey_is_rescaled_not_clipped():
    data = gray16_png(32768)
    naive = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
    assert naive == (255, 255, 255)  # what a bare convert would store
    assert decode(normalize_image(data, 10_000)).getpixel((0, 0)) == (128, 128, 128)
    assert decode(normalize_image(gray16_png(65535), 10_000)).getpixel((0, 0)) == (255,) * 3


def test_32bit_int_and_float_grey():
    eight_bit = Image.fromarray(np.full((2, 2), 77, dtype=np.int32), mode="I")
    assert decode(normalize_image(eight_bit, 100)).getpixel((0, 0)) == (77, 77, 77)
    unit = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F")
    assert decode(normalize_image(unit, 100)).getpixel((0, 0)) == (128, 128, 128)


def test_pixel_cap_keeps_aspect_ratio():
    src = chart_image(3, (300, 200))
    out = decode(normalize_image(encode(src), 6_000))
    w, h = out.size
    assert w * h <= 6_000
    assert abs(w / h - 1.5) < 0.05
    assert w * h > 6_000 * 0.95  # not needlessly small


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20_000), st.integers(1, 20_000), st.integers(1, 5_000_000))
def test_capped_size_property(w, h, cap):
    cw, ch = capped_size(w, h, cap)
    if w * h <= cap:
        assert (cw, ch) == (w, h)
        return
    assert 1 <= cw <= w and 1 <= ch <= h
    assert cw * ch <= cap
    if cw >= 20 and ch >= 20:  # aspect kept (to rounding) and the cap nearly used
        assert abs((cw / ch) / (w / h) - 1) < 0.1
        assert cw * ch >= 0.85 * cap


def test_exif_orientation_is_applied():
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = decode(normalize_image(encode(src, "JPEG", exif=exif.tobytes()), 10_000))
    assert out.size == (20, 40)


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode(normalize_image(buf.getvalue(), 100)).getpixel((1, 1)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (b"", CORRUPT, "empty file"),
        (corrupt_bytes(), CORRUPT, "cannot decode"),
        (truncated_png(), CORRUPT, "cannot decode"),
        (b"just some text, not an image", CORRUPT, "cannot decode"),
        ({"bytes": None, "path": None}, MISSING, "neither bytes nor path"),
        ("/nonexistent/dir/x.png", MISSING, "no such file"),
        (12345, CORRUPT, "unsupported image value"),
    ],
)
def test_bad_images_raise_image_error(data, kind, reason):
    with pytest.raises(ImageError) as err:
        normalize_image(data, 10_000)
    assert err.value.kind == kind
    assert reason in err.value.reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as err:
        normalize_image(str(path), 10_000)
    assert err.value.kind == CORRUPT


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return solid_png(8000, 5000)  # 40 MP, solid colour: ~130 kB


def test_40_megapixel_png_is_downscaled_not_dropped(big_png):
    out = decode(normalize_image(big_png, 1_000_000))
    w, h = out.size
    assert w * h <= 1_000_000 and abs(w / h - 1.6) < 0.01
    assert out.getpixel((w // 2, h // 2)) == (30, 120, 200)


def test_over_decode_limit_is_refused_before_decoding(big_png):
    with pytest.raises(ImageError) as err:
        normalize_image(big_png, 1_000_000, max_decode_pixels=30_000_000)
    assert err.value.kind == TOO_LARGE
    assert "too large: 40000000 px" in err.value.reason


def test_big_jpeg_decodes_reduced_within_the_limit():
    # The same 40 MP over a 30 MP decode limit: a JPEG passes because the decoder is
    # asked for a reduced scale (Image.draft), a PNG (previous test) cannot be.
    out = decode(normalize_image(solid_jpeg(8000, 5000), 1_000_000,
                                 max_decode_pixels=30_000_000))
    w, h = out.size
    assert w * h <= 1_000_000
    r, g, b = out.getpixel((w // 2, h // 2))
    assert abs(r - 30) <= 3 and abs(g - 120) <= 3 and abs(b - 200) <= 3


def test_decompression_bomb_header_is_too_large_not_corrupt():
    # 20000 x 20000 = 400 MP: over Pillow's own bomb limit (2 x MAX_IMAGE_PIXELS), which
    # raises at open time; we report it as too large whatever our own limit says.
    data = png_header_only(20_000, 20_000)
    with pytest.raises(ImageError) as err:
        normalize_image(data, 1_000_000, max_decode_pixels=10**12)
    assert err.value.kind == TOO_LARGE


def test_bad_max_pixels():
    with pytest.raises(ValueError):
        normalize_image(encode(chart_image(0)), 0)


def test_paths_confined_to_the_base_folder(tmp_path):
    base, outside = tmp_path / "src", tmp_path / "elsewhere"
    (base / "img").mkdir(parents=True)
    outside.mkdir()
    data = encode(chart_image(1))
    (base / "img" / "a.png").write_bytes(data)
    (outside / "b.png").write_bytes(data)
    (base / "img" / "out.png").symlink_to(outside / "b.png")
    (base / "img" / "in.png").symlink_to(base / "img" / "a.png")
    (base / "img" / "sub").symlink_to(outside, target_is_directory=True)
    ok = normalize_image("img/a.png", 10_000, base_dir=base, allow_outside=False)
    # Inside, by any road (an absolute path into it, a symlink that stays in it).
    for fine in (str(base / "img" / "a.png"), "img/in.png", "img/../img/a.png",
                 {"bytes": None, "path": "img/a.png"}):
        assert normalize_image(fine, 10_000, base_dir=base, allow_outside=False) == ok
    for hostile in ("../elsewhere/b.png", str(outside / "b.png"), "img/out.png",
                    "img/sub/b.png", "/etc/passwd", {"bytes": None, "path": "../elsewhere/b.png"}):
        with pytest.raises(ImageError) as err:
            normalize_image(hostile, 10_000, base_dir=base, allow_outside=False)
        assert err.value.kind == OUTSIDE and "allow_outside: true" in err.value.reason
        # ...and read as before when the caller allows it explicitly.
        if hostile != "/etc/passwd":
            assert normalize_image(hostile, 10_000, base_dir=base, allow_outside=True) == ok
    # No folder to confine to: paths are refused, bytes still work.
    with pytest.raises(ImageError, match="no folder"):
        normalize_image(str(base / "img" / "a.png"), 10_000, allow_outside=False)
    assert normalize_image(data, 10_000, allow_outside=False) == ok
