"""TorchServe handler of a whole expert in one place: the cloud-only baseline.

Image in; every stage and the final exit run here (no early exit, nothing offloaded); JSON out
with `class`, `class_name`, `confidence`, `exit` 3. The archive (`full_<expert>.mar`, built by
`python -m export.archive --full`) carries the expert's edge manifest as `model_manifest.json` and
its cloud manifest as `cloud_manifest.json`, with the ONNX files of both.
"""

from __future__ import annotations

import json

import numpy as np

from core.imaging import decode_image
from core.manifest import Manifest, check_pair
from handlers.runtime import CloudExpert, EdgeExpert
from handlers.service import Service, body_bytes

CLOUD_MANIFEST_NAME = "cloud_manifest.json"


class FullModelHandler(Service):
    role = "edge"

    def load(self, model_dir, *, threads, providers) -> None:
        cloud_manifest = Manifest.load(model_dir / CLOUD_MANIFEST_NAME)
        check_pair(self.manifest, cloud_manifest)
        self.edge = EdgeExpert(self.manifest, model_dir, threads=threads, providers=providers)
        self.cloud = CloudExpert(cloud_manifest, model_dir, threads=threads, providers=providers)
        (self.final,) = cloud_manifest.exits

    def parse(self, request: dict, context: object, idx: int) -> object:
        return self.edge.preprocessing.model_input(decode_image(body_bytes(request)))

    def run(self, items: dict[int, object], context: object) -> dict[int, str]:
        order = list(items)
        x = np.stack([items[i] for i in order])
        result = self.edge.run_batch(x, 2.0)  # a threshold above 1: no side branch answers
        conf, pred = self.cloud.run_batch(result.split)
        names = self.manifest.class_names
        answers = {}
        for j, i in enumerate(order):
            answers[i] = json.dumps(
                {
                    "exit": self.final.index,
                    "exit_name": self.final.name,
                    "class": int(pred[j]),
                    "class_name": names[int(pred[j])],
                    "confidence": float(conf[j]),
                    "expert": self.manifest.name,
                }
            )
            context.set_response_content_type(i, "application/json")
        return answers
