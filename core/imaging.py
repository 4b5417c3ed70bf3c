"""Image decoding, resizing and model-input normalisation: the one implementation.

Training (datasets), export (parity images), the TorchServe handlers and the router all call these
functions, so an image becomes the same tensor everywhere (the classic training/serving skew bug
cannot creep in through a second copy). numpy + OpenCV only.

Conventions: images are RGB, uint8, HxWx3 (HWC); model inputs are float32, 3xHxW (CHW),
`(x / 255 - mean) / std` with ImageNet statistics by default (torchvision's MobileNetV2 recipe).
Resizing is to a square `size x size`, as the reference prototype did (aspect ratio not kept).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.errors import ImageDecodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Limits for untrusted input: refuse before decoding, so a small file that claims 50,000 x 50,000
# pixels (a decompression bomb) never reaches the decoder.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format(data: bytes) -> str | None:
    """'png', 'jpeg' or None, from the magic bytes."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    return None


def _jpeg_segments(data: bytes):
    """(marker, payload) of every JPEG header segment up to the start of scan; the payload may be
    cut short when the body is. Raises ImageDecodeError on a corrupt marker stream. The one walk
    over a JPEG header: the frame size and the quantisation tables are both read through it."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageDecodeError("corrupt JPEG marker stream")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise ImageDecodeError("corrupt JPEG segment length")
        if marker == 0xDA:  # start of scan: the header is over
            return
        yield marker, data[pos + 4 : pos + 2 + length]
        pos += 2 + length


def header_dimensions(data: bytes) -> tuple[int, int]:
    """(height, width) read from a PNG or JPEG header without decoding the pixels."""
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("truncated PNG header")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if fmt == "jpeg":
        for marker, payload in _jpeg_segments(data):
            if marker in _JPEG_SOF:
                if len(payload) < 5:
                    break
                height, width = struct.unpack(">HH", payload[1:5])
                return height, width
        raise ImageDecodeError("JPEG without a frame header (truncated?)")
    raise ImageDecodeError("not a JPEG or PNG image")


# The JPEG standard's example luminance quantisation table (ITU-T T.81 Annex K, table K.1), in
# natural (row-major) order; the IJG library (libjpeg, libjpeg-turbo: OpenCV, Pillow and most
# cameras' firmware) scales it by the quality setting.
_JPEG_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ]
).ravel()
# DQT segments list a table in zigzag order: along the anti-diagonals, alternating direction.
_ZIGZAG = np.array(
    sorted(range(64), key=lambda k: (k // 8 + k % 8, k // 8 if (k // 8 + k % 8) % 2 else k % 8))
)


def _ijg_luma_tables() -> np.ndarray:
    """100 x 64: the luminance table (zigzag order) the IJG library writes at quality 1..100."""
    quality = np.arange(1, 101)
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    tables = (_JPEG_LUMA_TABLE[_ZIGZAG][None, :] * scale[:, None] + 50) // 100
    return np.clip(tables, 1, 255)


_IJG_LUMA_TABLES = _ijg_luma_tables()


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest the body's, read from its DQT
    segment without decoding; None for a body that is not a JPEG or has no readable luminance table.

    Exact for the IJG encoders (OpenCV, Pillow, libjpeg-based cameras); for an encoder with its own
    tables, the IJG quality that quantises most alike. How much of an image's fine detail (and of
    its noise) survived the encoder, which the classifier's decision is tuned by
    (`core.manifest.band_offsets`).
    """
    if image_format(data) != "jpeg":
        return None
    try:
        for marker, payload in _jpeg_segments(data):
            if marker != 0xDB:  # define quantisation tables: one or more per segment
                continue
            pos = 0
            while pos < len(payload):
                precision, table_id = payload[pos] >> 4, payload[pos] & 0x0F
                size = 64 * (2 if precision else 1)
                values = payload[pos + 1 : pos + 1 + size]
                if len(values) < size:
                    return None
                if table_id == 0:  # luminance, by the JFIF convention
                    table = np.frombuffer(values, dtype=">u2" if precision else np.uint8).astype(np.int64)
                    return int(np.abs(_IJG_LUMA_TABLES - table[None, :]).sum(axis=1).argmin()) + 1
                pos += 1 + size
    except ImageDecodeError:
        return None
    return None


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray (HxW or HxWx1) and RGBA images to RGB uint8 HxWx3; RGB passes through."""
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageDecodeError(f"unsupported image shape {image.shape}")


def decode_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode JPEG or PNG bytes to RGB uint8 HxWx3, refusing empty, oversize or non-image input."""
    if not data:
        raise ImageDecodeError("empty body")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
    height, width = header_dimensions(data)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image header claims {width}x{height} pixels")
    if height * width > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError("image data could not be decoded (corrupt or truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# Chroma subsampling of a JPEG encoder: 4:2:0 (OpenCV's and most cameras' default: the two colour
# planes at half resolution both ways) or 4:4:4 (full-resolution colour, some apps and encoders).
JPEG_SUBSAMPLING = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}


def encode_image(
    image: np.ndarray, fmt: str = "png", *, jpeg_quality: int = 95, subsampling: str = "420"
) -> bytes:
    """RGB uint8 image to PNG (lossless) or JPEG bytes (`jpeg_quality`, chroma `subsampling`)."""
    bgr = cv2.cvtColor(to_rgb(image), cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    elif fmt in ("jpg", "jpeg"):
        if subsampling not in JPEG_SUBSAMPLING:
            raise ValueError(
                f"unknown chroma subsampling {subsampling!r} (known: {', '.join(JPEG_SUBSAMPLING)})"
            )
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SUBSAMPLING[subsampling]]
        ok, buf = cv2.imencode(".jpg", bgr, params)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    if not ok:
        raise ValueError("OpenCV could not encode the image")
    return buf.tobytes()


@dataclass(frozen=True)
class ImageWire:
    """How a device puts an image on the wire: lossless PNG, or JPEG at a quality and subsampling.

    Written `png`, `jpeg:QUALITY` (4:2:0, as OpenCV and most cameras encode) or
    `jpeg:QUALITY:444`. Every accuracy figure names its wire: the classifier and the experts see
    what the encoder left of an image, and JPEG removes exactly the fine detail and the colour noise
    a lossless image keeps.
    """

    format: str = "png"
    quality: int | None = None
    subsampling: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageWire:
        """`png`, `jpeg:90` or `jpeg:90:444`; ValueError with the accepted forms otherwise."""
        parts = str(text).strip().lower().split(":")
        if parts == ["png"]:
            return cls()
        if parts[0] in ("jpeg", "jpg") and len(parts) in (2, 3) and parts[1].isdigit():
            quality = int(parts[1])
            subsampling = parts[2] if len(parts) == 3 else "420"
            if 1 <= quality <= 100 and subsampling in JPEG_SUBSAMPLING:
                return cls("jpeg", quality, subsampling)
        raise ValueError(
            f"unknown image wire {text!r}: use png, jpeg:QUALITY (1-100, 4:2:0) or jpeg:QUALITY:444"
        )

    @classmethod
    def of_body(cls, data: bytes) -> ImageWire | None:
        """The wire a request body came on, as far as its header tells: PNG, or JPEG with the
        quality its quantisation table shows (`jpeg_quality`; None when unreadable) and the
        subsampling left unknown (None); None for a body that is neither."""
        fmt = image_format(data)
        if fmt == "png":
            return cls()
        if fmt == "jpeg":
            return cls("jpeg", jpeg_quality(data), None)
        return None

    def __str__(self) -> str:
        if self.format == "png":
            return "png"
        return ("jpeg" if self.quality is None else f"jpeg:{self.quality}") + (
            ":444" if self.subsampling == "444" else ""
        )

    @property
    def lossless(self) -> bool:
        return self.format == "png"

    def encode(self, image: np.ndarray) -> bytes:
        """The bytes a device on this wire sends for `image`."""
        if self.lossless:
            return encode_image(image, "png")
        return encode_image(image, "jpeg", jpeg_quality=self.quality, subsampling=self.subsampling)

    def round_trip(self, image: np.ndarray) -> np.ndarray:
        """What the server decodes from this wire's bytes for `image` (lossless: `image` itself)."""
        return image if self.lossless else decode_image(self.encode(image))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize to `size x size`; area interpolation when shrinking, bilinear when growing.

    An image already at the size is returned unchanged, so re-preprocessing an image that was
    written at the model's size is exact.
    """
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image, (size, size), interpolation=interpolation)
    return out[:, :, None] if out.ndim == 2 and image.ndim == 3 else out


def normalize(
    image: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """RGB uint8 HxWx3 to float32 3xHxW: `(x / 255 - mean) / std`, computed in float32."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the backbone's input; recorded in checkpoints and manifests."""

    size: int = 64
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 image of any size to the float32 3xSxS model input."""
        return normalize(resize(to_rgb(image), self.size), self.mean, self.std)

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            size=int(d["size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )
