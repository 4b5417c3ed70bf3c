"""Image decoding, limits, resize and normalisation."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from core.errors import ImageDecodeError
from core.imaging import (
    ImageWire,
    Preprocessing,
    decode_image,
    encode_image,
    header_dimensions,
    jpeg_quality,
    normalize,
    resize,
)
from tests.conftest import textured_image


def test_png_roundtrip_is_exact_and_rgb_ordered():
    image = textured_image(0)
    image[0, 0] = (255, 0, 0)
    out = decode_image(encode_image(image, "png"))
    np.testing.assert_array_equal(out, image)
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_jpeg_decodes_close_and_header_dimensions():
    image = np.repeat(textured_image(1)[:, :30, :1], 3, axis=2)  # gray: no chroma subsampling loss
    data = encode_image(image, "jpg", jpeg_quality=95)
    assert header_dimensions(data) == (48, 30)
    out = decode_image(data)
    assert out.shape == (48, 30, 3)
    assert np.abs(out.astype(int) - image).mean() < 4


def _luma_sampling(jpeg: bytes) -> int:
    """The luma component's sampling byte (H << 4 | V) of a baseline JPEG's frame header."""
    pos = jpeg.index(b"\xff\xc0")
    assert jpeg[pos + 9] == 3  # three components: Y, Cb, Cr
    return jpeg[pos + 11]


@pytest.mark.parametrize(
    "text,canonical,subsampling",
    [("png", "png", None), ("jpeg:90", "jpeg:90", "420"), ("JPG:75:444", "jpeg:75:444", "444")],
)
def test_image_wire_names(text, canonical, subsampling):
    wire = ImageWire.parse(text)
    assert str(wire) == canonical and ImageWire.parse(str(wire)) == wire
    assert wire.subsampling == subsampling and wire.lossless == (canonical == "png")


@pytest.mark.parametrize("text", ["", "webp", "jpeg", "jpeg:0", "jpeg:101", "jpeg:x", "jpeg:90:422", "png:9"])
def test_image_wire_refuses_what_it_cannot_send(text):
    with pytest.raises(ValueError, match="png, jpeg:QUALITY"):
        ImageWire.parse(text)


def test_image_wires_send_what_they_say():
    image = textured_image(3)
    assert ImageWire.parse("png").round_trip(image) is image
    np.testing.assert_array_equal(decode_image(ImageWire().encode(image)), image)
    q90, q30 = ImageWire.parse("jpeg:90"), ImageWire.parse("jpeg:30")
    assert q90.encode(image)[:2] == b"\xff\xd8"
    assert _luma_sampling(q90.encode(image)) == 0x22  # 4:2:0: luma sampled twice each way
    assert _luma_sampling(ImageWire.parse("jpeg:90:444").encode(image)) == 0x11
    assert len(q30.encode(image)) < len(q90.encode(image))  # the quality reaches the encoder
    error = {w: np.abs(w.round_trip(image).astype(int) - image).mean() for w in (q90, q30)}
    assert 0 < error[q90] < error[q30]
    with pytest.raises(ValueError, match="subsampling"):
        encode_image(image, "jpeg", subsampling="422")


def _dqt(table_id: int, values: np.ndarray, *, sixteen_bits: bool = False) -> bytes:
    """A DQT segment holding one table (given in zigzag order)."""
    body = bytes([(0x10 if sixteen_bits else 0) | table_id])
    body += values.astype(">u2" if sixteen_bits else np.uint8).tobytes()
    return b"\xff\xdb" + struct.pack(">H", 2 + len(body)) + body


def test_jpeg_quality_reads_the_encoders_table():
    image = textured_image(5)
    for quality in range(1, 101):
        for subsampling in ("420", "444"):
            body = encode_image(image, "jpeg", jpeg_quality=quality, subsampling=subsampling)
            assert jpeg_quality(body) == quality, (quality, subsampling)
    pil = pytest.importorskip("PIL.Image")
    import io

    for quality in (20, 50, 75, 95):
        buf = io.BytesIO()
        pil.fromarray(image).save(buf, "JPEG", quality=quality)
        assert jpeg_quality(buf.getvalue()) == quality


def test_jpeg_quality_of_handmade_headers():
    from core.imaging import _IJG_LUMA_TABLES

    q40, q80 = _IJG_LUMA_TABLES[39], _IJG_LUMA_TABLES[79]
    soi, sos = b"\xff\xd8", b"\xff\xda\x00\x02"
    assert jpeg_quality(soi + _dqt(0, q40, sixteen_bits=True) + sos) == 40  # 16-bit precision
    assert jpeg_quality(soi + _dqt(1, q80) + _dqt(0, q40) + sos) == 40  # the luminance table, not the first
    nearest = q80.copy()
    nearest[5] += 1  # not an IJG table: the nearest IJG quality
    assert jpeg_quality(soi + _dqt(0, nearest) + sos) == 80
    assert jpeg_quality(soi + _dqt(0, q40)[:30]) is None  # cut short
    assert jpeg_quality(soi + sos + _dqt(0, q40)) is None  # after the start of scan: pixel data
    assert jpeg_quality(soi + b"\x00\x00" + _dqt(0, q40)) is None  # corrupt marker stream
    assert jpeg_quality(encode_image(textured_image(1), "png")) is None
    assert jpeg_quality(b"") is None
    body = encode_image(textured_image(1), "jpeg", jpeg_quality=90)
    rng = np.random.default_rng(0)
    for cut in rng.integers(0, len(body), 200):  # any prefix, any byte flipped: an answer, never a raise
        broken = bytearray(body[:cut])
        if broken:
            broken[rng.integers(len(broken))] ^= 0xFF
        assert jpeg_quality(bytes(broken)) in (None, *range(1, 101))


def test_the_wire_of_a_body():
    image = textured_image(4)
    assert ImageWire.of_body(encode_image(image, "png")) == ImageWire()
    wire = ImageWire.of_body(ImageWire.parse("jpeg:70:444").encode(image))
    assert wire == ImageWire("jpeg", 70, None) and str(wire) == "jpeg:70"  # subsampling not read
    assert str(ImageWire("jpeg", None, None)) == "jpeg"
    assert ImageWire.of_body(b"GIF89a") is None


def test_gray_and_rgba_png_become_rgb():
    gray = textured_image(2)[:, :, 0]
    ok, buf = cv2.imencode(".png", gray)
    out = decode_image(buf.tobytes())
    assert out.shape == (48, 48, 3) and (out[:, :, 0] == gray).all() and (out[:, :, 2] == gray).all()
    rgba = np.dstack([textured_image(3), np.full((48, 48), 128, np.uint8)])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(decode_image(buf.tobytes()), rgba[:, :, :3])


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty body"),
        (b"hello world, not an image", "not a JPEG or PNG"),
        (b"GIF89a" + bytes(40), "not a JPEG or PNG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(4), "truncated PNG header"),
        (b"\xff\xd8\xff\xe0\x00", "JPEG without a frame header"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_image_is_refused():
    data = encode_image(textured_image(4), "png")
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused_from_header():
    # A valid PNG header claiming 60000 x 60000 pixels: refused before any decoding.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(b"\x89PNG\r\n\x1a\n" + chunk)


def test_size_limit_in_bytes():
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 100"):
        decode_image(encode_image(textured_image(5), "png"), max_bytes=100)


def test_resize_is_noop_at_size_and_square_otherwise():
    image = textured_image(7)
    assert resize(image, 48) is image
    assert resize(image, 64).shape == (64, 64, 3)
    assert resize(image[:, :20], 32).shape == (32, 32, 3)


def test_normalize_matches_formula_in_float32():
    image = textured_image(8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = normalize(image, mean, std)
    assert x.dtype == np.float32 and x.shape == (3, 48, 48)
    expected = (image.astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-5)


def test_preprocessing_roundtrips_through_dict():
    p = Preprocessing(size=96)
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert p.model_input(textured_image(9)).shape == (3, 96, 96)
