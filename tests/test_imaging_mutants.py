"""`core.imaging` where its mutants showed it unpinned (docs/results/mutation.md): the JPEG header
walk (fill bytes, markers without a length, odd lengths), header sizes at their limits, exact
refusal reasons, the IJG quality tables against the ones OpenCV's encoder writes, channel
conversions and the interpolation `resize` picks. Headers are built byte by byte here.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from core.errors import ImageDecodeError
from core.imaging import (
    ImageWire,
    Preprocessing,
    _ijg_luma_tables,
    decode_image,
    encode_image,
    header_dimensions,
    jpeg_quality,
    normalize,
    resize,
    to_rgb,
)
from tests.conftest import textured_image

SOI = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_FRAME = "JPEG without a frame header (truncated?)"


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def sof(height: int, width: int) -> bytes:
    """A baseline start-of-frame segment: precision, height, width, one component."""
    return segment(0xC0, bytes([8]) + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00")


def png_header(width: int, height: int, chunk: bytes = b"IHDR") -> bytes:
    """The first 24 bytes of a PNG: signature, the IHDR chunk's length and type, width, height."""
    return PNG_SIGNATURE + struct.pack(">I", 13) + chunk + struct.pack(">II", width, height)


def png_file(width: int, height: int) -> bytes:
    """A whole PNG whose header says `width` x `height` (pixel data: one gray row, if any)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(max(height, 1))))
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- the JPEG header walk ----------------------------------------------------------------------
def test_fill_bytes_before_a_marker_are_skipped():
    assert header_dimensions(SOI + b"\xff\xff" + sof(30, 40)) == (30, 40)
    assert header_dimensions(SOI + b"\xff" + sof(30, 40)) == (30, 40)


@pytest.mark.parametrize("marker", [0x01, 0xD0, 0xD7])
def test_markers_without_a_length_are_stepped_over(marker):
    assert header_dimensions(SOI + bytes([0xFF, marker]) + sof(30, 40)) == (30, 40)


def test_an_empty_segment_is_stepped_over():
    assert header_dimensions(SOI + segment(0xE0, b"") + sof(30, 40)) == (30, 40)


@pytest.mark.parametrize("length", [0, 1])
def test_a_segment_length_below_two_is_corrupt(length):
    assert (
        refusal(header_dimensions, SOI + b"\xff\xe0" + struct.pack(">H", length))
        == "corrupt JPEG segment length"
    )


def test_the_last_four_bytes_are_read_as_a_marker():
    assert refusal(header_dimensions, SOI + b"\x00\x00\x00\x00") == "corrupt JPEG marker stream"
    assert refusal(header_dimensions, SOI + b"\x00\x00\x00") == NO_FRAME


def test_a_long_segment_in_a_short_body_is_cut_short_not_corrupt():
    # 0x8000 reads as -32768 if taken as signed
    assert refusal(header_dimensions, SOI + b"\xff\xe0\x80\x00" + bytes(10)) == NO_FRAME


def test_large_jpeg_dimensions_are_unsigned():
    assert header_dimensions(SOI + sof(40000, 50000)) == (40000, 50000)


def test_a_frame_header_cut_right_after_the_width_is_enough():
    frame = b"\xff\xc0\x00\x07" + bytes([8]) + struct.pack(">HH", 30, 40)  # length 7: payload of 5
    assert header_dimensions(SOI + frame) == (30, 40)
    assert refusal(header_dimensions, SOI + frame[:-1]) == NO_FRAME


def test_header_refusal_reasons():
    assert refusal(header_dimensions, b"GIF89a" + bytes(30)) == "not a JPEG or PNG image"
    assert refusal(header_dimensions, png_header(5, 5)[:23]) == "truncated PNG header"
    assert refusal(header_dimensions, png_header(5, 5, chunk=b"IDAT")) == "truncated PNG header"


def test_a_png_header_of_exactly_24_bytes_and_a_huge_width():
    assert header_dimensions(png_header(7, 5)) == (5, 7)
    assert header_dimensions(png_header(2**31, 1)) == (1, 2**31)


# -- quality tables ----------------------------------------------------------------------------
def luma_table_written_by_opencv(quality: int) -> np.ndarray:
    """The luminance table (zigzag order, as stored) of OpenCV's JPEG at `quality`, read by hand."""
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    data = buf.tobytes()
    pos = data.index(b"\xff\xdb")
    length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    payload = data[pos + 4 : pos + 2 + length]
    assert payload[0] == 0x00  # 8-bit precision, table 0 first
    return np.frombuffer(payload[1:65], np.uint8).astype(np.int64)


def test_the_ijg_tables_are_the_ones_opencv_writes():
    tables = _ijg_luma_tables()
    assert tables.shape == (100, 64)
    for quality in range(1, 101):
        np.testing.assert_array_equal(
            tables[quality - 1], luma_table_written_by_opencv(quality), str(quality)
        )


def dqt(*tables: tuple[int, int, bytes]) -> bytes:
    """One DQT segment holding (precision, table id, values) tables in order."""
    return segment(0xDB, b"".join(bytes([(p << 4) | t]) + v for p, t, v in tables))


def q50() -> bytes:
    return bytes(int(v) for v in _ijg_luma_tables()[49])


def test_quality_of_a_luma_table_after_other_tables_in_the_same_segment():
    chroma = bytes([0x10]) + bytes(range(1, 64))  # its first value byte would read as a header
    assert jpeg_quality(SOI + dqt((0, 1, chroma), (0, 0, q50()), (0, 2, bytes(64))) + sof(8, 8)) == 50
    assert jpeg_quality(SOI + dqt((0, 0, q50()), (0, 1, chroma)) + sof(8, 8)) == 50


def test_quality_after_a_16_bit_table_and_another():
    wide = bytes(64) + bytes([0x00]) + bytes([1] * 63)  # byte 65 of the payload: a decoy table 0
    body = SOI + dqt((1, 1, wide), (0, 2, bytes(range(64))), (0, 0, q50())) + sof(8, 8)
    assert jpeg_quality(body) == 50


# -- decoding limits and reasons ---------------------------------------------------------------
def test_decode_limits_are_inclusive():
    png = encode_image(textured_image(1, 4))
    assert decode_image(png, max_bytes=len(png)).shape == (4, 4, 3)
    assert decode_image(png, max_pixels=16).shape == (4, 4, 3)
    assert refusal(decode_image, png, max_pixels=15) == "image of 4x4 pixels exceeds the limit of 15"


def test_a_one_pixel_image_decodes():
    assert decode_image(png_file(1, 1)).shape == (1, 1, 3)


@pytest.mark.parametrize("width, height", [(0, 5), (5, 0), (0, 0)])
def test_a_header_claiming_no_pixels_is_refused(width, height):
    assert refusal(decode_image, png_file(width, height)) == f"image header claims {width}x{height} pixels"


def test_decode_refusal_reasons():
    assert refusal(decode_image, b"") == "empty body"
    png = encode_image(textured_image(1, 16))
    assert refusal(decode_image, png[:40]) == "image data could not be decoded (corrupt or truncated)"


# -- encoding ----------------------------------------------------------------------------------
def test_jpeg_defaults_to_quality_95():
    assert jpeg_quality(encode_image(textured_image(2, 16), "jpeg")) == 95


def test_encode_refusal_reasons():
    image = textured_image(2, 8)
    with pytest.raises(ValueError) as info:
        encode_image(image, "jpeg", subsampling="422")
    assert str(info.value) == "unknown chroma subsampling '422' (known: 420, 444)"
    with pytest.raises(ValueError) as info:
        encode_image(image, "gif")
    assert str(info.value) == "unknown image format 'gif'"


@pytest.mark.parametrize("text, quality", [("jpeg:1", 1), ("jpg:100", 100)])
def test_image_wire_qualities_at_the_ends(text, quality):
    assert ImageWire.parse(text) == ImageWire("jpeg", quality, "420")


# -- channels ----------------------------------------------------------------------------------
def test_to_rgb_conversions():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(to_rgb(gray), expected)
    np.testing.assert_array_equal(to_rgb(gray[:, :, None]), expected)
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = to_rgb(rgba)
    np.testing.assert_array_equal(out, rgba[:, :, :3])
    assert out.shape == (2, 3, 3) and out.flags.c_contiguous
    rgb = np.zeros((2, 3, 3), np.uint8)
    assert to_rgb(rgb) is rgb


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 2, 5), (2, 2, 3, 1), (2, 2, 4, 1), (2, 2, 1, 1)])
def test_to_rgb_refuses_other_shapes(shape):
    assert refusal(to_rgb, np.zeros(shape, np.uint8)) == f"unsupported image shape {shape}"


def test_to_rgb_refuses_other_dtypes():
    assert refusal(to_rgb, np.zeros((2, 2, 3), np.float32)) == "expected uint8 pixels, got float32"


# -- resizing and normalising ------------------------------------------------------------------
def test_resize_shrinks_with_area_and_grows_bilinear():
    image = textured_image(3, 32)
    np.testing.assert_array_equal(
        resize(image, 12), cv2.resize(image, (12, 12), interpolation=cv2.INTER_AREA)
    )
    np.testing.assert_array_equal(
        resize(image, 50), cv2.resize(image, (50, 50), interpolation=cv2.INTER_LINEAR)
    )
    # as many pixels as the target: not shrinking
    wide = textured_image(4, 32)[:8]  # 8 x 32 -> 16 x 16
    np.testing.assert_array_equal(
        resize(wide, 16), cv2.resize(wide, (16, 16), interpolation=cv2.INTER_LINEAR)
    )


def test_resize_when_one_side_is_already_at_the_size():
    assert resize(textured_image(5, 20)[:, :10], 20).shape == (20, 20, 3)
    assert resize(textured_image(5, 20)[:10], 20).shape == (20, 20, 3)


def test_resize_keeps_the_channel_axis_it_was_given():
    assert resize(np.zeros((10, 10, 1), np.uint8), 5).shape == (5, 5, 1)
    assert resize(np.zeros((10, 10), np.uint8), 5).shape == (5, 5)


def test_normalize_is_computed_in_float32():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    expected = ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    np.testing.assert_array_equal(normalize(image, mean, std), expected)


def test_preprocessing_uses_its_own_statistics():
    p = Preprocessing(size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    image = textured_image(6, 8)
    np.testing.assert_array_equal(p.model_input(image), normalize(image, p.mean, p.std))
    assert Preprocessing.from_dict(p.to_dict()) == p
