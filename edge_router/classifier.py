"""The distortion classifier inside the router (one TorchServe hop on the edge, not two).

The same `handlers.runtime` class and manifest as its TorchServe archive, loaded from the model
store's `distortion_classifier.mar` (or an export folder).
"""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.errors import UserInputError
from core.experts import CLASSIFIER
from core.imaging import ImageWire, decode_image
from core.manifest import Manifest, ManifestError
from edge_router.options import RouterError
from handlers.runtime import DistortionClassifierRuntime


class LocalClassifier:
    """The distortion classifier from its archive (`*.mar`) or an export folder.

    An image up to `inline_bytes` is classified on the event loop itself (about 2 ms at 224 px
    with the luma spectrum alone, about 3 ms with luma and chroma; a hand-off to a thread and back
    cost 0.5 ms more); a larger one, whose
    decoding could hold the loop for tens of milliseconds, in a small thread pool."""

    inline_bytes = 256 * 1024

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

    def distortion(self, body: bytes) -> tuple[str, dict[str, float]]:
        return self.runtime.distortions([decode_image(body)], [ImageWire.of_body(body)])[0]

    async def __call__(self, body: bytes) -> tuple[str, dict[str, float]]:
        try:
            if len(body) <= self.inline_bytes:
                return self.distortion(body)
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.distortion, body)
        except ValueError as exc:  # an image whose header looked fine but does not decode
            raise RouterError(400, " ".join(str(exc).split())[:200]) from None
