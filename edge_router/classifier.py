"""The distortion classifier inside the router (one TorchServe hop on the edge, not two).

The same `handlers.runtime` class and manifest as its TorchServe archive, loaded from the model
store's `distortion_classifier.mar` (or an export folder).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.errors import UserInputError
from core.experts import CLASSIFIER
from core.imaging import ImageWire, decode_image, header_dimensions
from core.manifest import Manifest, ManifestError
from edge_router.options import RouterError
from handlers.runtime import DistortionClassifierRuntime


class LocalClassifier:
    """The distortion classifier from its archive (`*.mar`) or an export folder.

    An image up to `inline_bytes` and `inline_pixels` is classified on the event loop itself (about
    2 ms at 224 px with the luma spectrum alone, about 3 ms with luma and chroma, measured before
    the four-spectrum network; a hand-off to a thread and back cost 0.5 ms more); a larger one,
    whose decoding could hold the loop for tens of milliseconds, in a small thread pool. Pixels
    count as well as bytes: a flat PNG of 50 KB can declare 4096 x 4096 pixels.

    Images above `large_pixels` are decoded one at a time. OpenCV's decoder holds twice the decoded
    image at its peak (its own buffer, then the array handed to Python): about 100 MB for a frame at
    the 16.7-MP limit, which two at once in the pool would add to the router's own 130 MB."""

    inline_bytes = 256 * 1024
    inline_pixels = 1024 * 1024
    large_pixels = 4 * 1024 * 1024

    def __init__(self, source: str | Path, *, threads: int = 1):
        source = Path(source)
        self._unpacked = None
        if source.is_dir():
            manifest_path, folder = source / f"{CLASSIFIER}.json", source
        elif source.suffix == ".mar" and source.is_file():
            from export.archive import extract
            from handlers.service import MANIFEST_NAME

            self._unpacked = tempfile.TemporaryDirectory(prefix="router_classifier_")
            folder = extract(source, Path(self._unpacked.name))
            manifest_path = folder / MANIFEST_NAME
        else:
            raise UserInputError(
                f"{source}: neither {CLASSIFIER}.mar nor an export folder (run python -m export.archive)"
            )
        try:
            self.manifest = Manifest.load(manifest_path)
            self.runtime = DistortionClassifierRuntime(self.manifest, folder, threads=threads)
        except (OSError, ManifestError) as exc:
            raise UserInputError(f"{source}: not a usable distortion classifier: {exc}") from None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="classifier")
        self._large = threading.Lock()  # one decode above `large_pixels` at a time

    def distortion(self, body: bytes, pixels: int | None = None) -> tuple[str, dict[str, float]]:
        """The class of an image body; `pixels`: its header's pixel count, when already read."""
        if (declared_pixels(body) if pixels is None else pixels) > self.large_pixels:
            with self._large:
                return self._distortion(body)
        return self._distortion(body)

    def _distortion(self, body: bytes) -> tuple[str, dict[str, float]]:
        return self.runtime.distortions([decode_image(body)], [ImageWire.of_body(body)])[0]

    async def __call__(self, body: bytes) -> tuple[str, dict[str, float]]:
        try:
            pixels = declared_pixels(body)
            if len(body) <= self.inline_bytes and pixels <= self.inline_pixels:
                return self.distortion(body, pixels)
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.distortion, body, pixels)
        except ValueError as exc:  # an image whose header looked fine but does not decode
            raise RouterError(400, " ".join(str(exc).split())[:200]) from None


def declared_pixels(body: bytes) -> int:
    """The pixel count an image's header declares; 0 when it has no readable header (the decoder
    then refuses it with its reason)."""
    try:
        height, width = header_dimensions(body)
    except ValueError:
        return 0
    return max(0, height) * max(0, width)
