"""TorchServe handler of a cloud expert: the split tensor in, the final exit's answer out.

Request: one tensor message in the binary wire format (`core.wire`; `Inference-Header-Content-Length`
header), whose name and per-sample shape must match the manifest's split contract; any batch size
up to `MAX_SAMPLES`. Response: JSON `predictions`, one `{class, class_name, confidence}` per
sample, plus `expert` and `run_id`. Requests batched by TorchServe run as one onnxruntime call.
"""

from __future__ import annotations

import json

import numpy as np

from core import wire
from handlers.runtime import CloudExpert
from handlers.service import RequestError, Service, body_bytes, header

MAX_SAMPLES = 64


class CloudExpertHandler(Service):
    role = "cloud"

    def load(self, model_dir, *, threads, providers) -> None:
        self.expert = CloudExpert(self.manifest, model_dir, threads=threads, providers=providers)
        self.contract = self.manifest.input
        (self.final,) = self.manifest.exits  # a cloud segment ends in the final exit

    def parse(self, request: dict, context: object, idx: int) -> object:
        per_sample = int(np.prod(self.contract.shape[1:]))
        message = wire.decode(
            body_bytes(request),
            header(context, idx, wire.HEADER_LENGTH),
            max_elements=MAX_SAMPLES * per_sample,
        )
        shape = tuple(message.array.shape)
        if message.name != self.contract.name or shape[1:] != tuple(self.contract.shape[1:]):
            raise RequestError(
                f"expected tensor {self.contract.name} of shape "
                f"[N, {', '.join(map(str, self.contract.shape[1:]))}], got "
                f"{message.name} {list(shape)}"
            )
        return message.array

    def run(self, items: dict[int, object], context: object) -> dict[int, str]:
        order = list(items)
        sizes = [items[i].shape[0] for i in order]
        conf, pred = self.expert.run_batch(np.concatenate([items[i] for i in order]))
        names = self.manifest.class_names
        answers, start = {}, 0
        for i, n in zip(order, sizes, strict=True):
            answers[i] = json.dumps(
                {
                    "predictions": [
                        {
                            "class": int(pred[s]),
                            "class_name": names[int(pred[s])],
                            "confidence": float(conf[s]),
                            "exit": self.final.index,
                            "exit_name": self.final.name,
                        }
                        for s in range(start, start + n)
                    ],
                    "expert": self.manifest.name,
                    "run_id": self.manifest.run_id,
                }
            )
            context.set_response_content_type(i, "application/json")
            start += n
        self.metric("CloudSamples", sum(sizes))
        return answers
