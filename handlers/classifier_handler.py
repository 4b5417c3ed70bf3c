"""TorchServe handler of the distortion classifier: image in, distortion probabilities out.

Request: a JPEG or PNG body. Response: JSON `distortion` (the most likely class) and
`probabilities` (class name -> probability). The spectra the manifest names (luma, chroma) are
computed by `core.spectrum`, the same code the classifier was trained with; the body's format picks
the network where the manifest keeps one per format (JPEG bodies: the one trained on JPEG frames).
"""

from __future__ import annotations

import json

from core.imaging import ImageWire, decode_image
from handlers.runtime import DistortionClassifierRuntime
from handlers.service import Service, body_bytes


class DistortionClassifierHandler(Service):
    role = "classifier"

    def load(self, model_dir, *, threads, providers) -> None:
        self.classifier = DistortionClassifierRuntime(
            self.manifest, model_dir, threads=threads, providers=providers
        )

    def parse(self, request: dict, context: object, idx: int) -> object:
        body = body_bytes(request)
        return decode_image(body), ImageWire.of_body(body)

    def run(self, items: dict[int, object], context: object) -> dict[int, str]:
        order = list(items)
        answers = {}
        images, wires = [items[i][0] for i in order], [items[i][1] for i in order]
        for i, (distortion, probabilities) in zip(
            order, self.classifier.distortions(images, wires), strict=True
        ):
            self.metric("DistortionRoutes", 1, dimensions={"Distortion": distortion})
            answers[i] = json.dumps({"distortion": distortion, "probabilities": probabilities})
            context.set_response_content_type(i, "application/json")
        return answers
