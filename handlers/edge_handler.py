"""TorchServe handler of an edge expert: image in; an early-exit answer or the split tensor out.

Request: a JPEG or PNG body. Optional headers: `X-Exit-Threshold` (p_tar in (0, 1], default the
manifest's), `X-Offload-Compression` (fp32, fp16 or int8; default fp32).
Response, when a side branch is confident: JSON with `exited: true`, `exit`, `class`,
`class_name`, `confidence` and every reached branch's confidence and class (`branches`).
Otherwise the split tensor in the binary wire format (`core.wire`), ready to forward unchanged to
the cloud expert: `Inference-Header-Content-Length` in the response headers, and the header's
`parameters` carry `exited: false`, `branches`, `expert` and `run_id` so the router can apply the
final-exit rule. Exits are decided per sample in a batch (`handlers.runtime.EdgeExpert`).
"""

from __future__ import annotations

import json

import numpy as np

from core import wire
from core.imaging import decode_image
from handlers.runtime import EdgeExpert
from handlers.service import RequestError, Service, body_bytes, header

THRESHOLD_HEADER = "X-Exit-Threshold"
COMPRESSION_HEADER = "X-Offload-Compression"


class EdgeExpertHandler(Service):
    role = "edge"

    def load(self, model_dir, *, threads, providers) -> None:
        self.expert = EdgeExpert(self.manifest, model_dir, threads=threads, providers=providers)
        self.default_threshold = self.manifest.exits[0].threshold

    def parse(self, request: dict, context: object, idx: int) -> object:
        image = decode_image(body_bytes(request))
        threshold = parse_threshold(header(context, idx, THRESHOLD_HEADER), self.default_threshold)
        compression = (header(context, idx, COMPRESSION_HEADER) or "fp32").strip().lower()
        if compression not in wire.COMPRESSIONS:
            raise RequestError(f"{COMPRESSION_HEADER} must be fp32, fp16 or int8, not {compression!r}")
        return self.expert.preprocessing.model_input(image), threshold, compression

    def run(self, items: dict[int, object], context: object) -> dict[int, str]:
        order = list(items)
        x = np.stack([items[i][0] for i in order])
        result = self.expert.run_batch(x, np.array([items[i][1] for i in order]))
        names = self.manifest.class_names
        answers = {}
        split_row = {int(j): r for r, j in enumerate(result.offloaded)}
        for j, i in enumerate(order):
            branches = [
                {
                    "exit": k,
                    "confidence": float(result.branch_confidence[j, k]),
                    "class": int(result.branch_prediction[j, k]),
                }
                for k in range(len(self.manifest.exits))
                if result.branch_prediction[j, k] >= 0
            ]
            if j in split_row:
                body, head_len = wire.encode(
                    result.split[split_row[j] : split_row[j] + 1],
                    name=self.manifest.output.name,
                    compression=items[i][2],
                    parameters={
                        "exited": False,
                        "branches": branches,
                        "expert": self.manifest.name,
                        "run_id": self.manifest.run_id,
                        "threshold": items[i][1],
                    },
                )
                context.set_response_header(i, wire.HEADER_LENGTH, str(head_len))
                context.set_response_content_type(i, wire.CONTENT_TYPE)
                self.metric("Offloads", 1)
                self.metric("OffloadBytes", len(body) - head_len)
                answers[i] = body
            else:
                k = int(result.exit_index[j])
                c = int(result.prediction[j])
                self.metric("ExitsByBranch", 1, dimensions={"Branch": str(k)})
                answers[i] = json.dumps(
                    {
                        "exited": True,
                        "exit": k,
                        "exit_name": self.manifest.exits[k].name,
                        "class": c,
                        "class_name": names[c],
                        "confidence": float(result.confidence[j]),
                        "branches": branches,
                        "expert": self.manifest.name,
                        "run_id": self.manifest.run_id,
                        "threshold": items[i][1],
                    }
                )
                context.set_response_content_type(i, "application/json")
        return answers


def parse_threshold(value: str | None, default: float) -> float:
    if value is None or not value.strip():
        return default
    try:
        t = float(value)
    except ValueError:
        raise RequestError(f"{THRESHOLD_HEADER} is not a number: {value[:40]!r}") from None
    if not 0 < t <= 1:
        raise RequestError(f"{THRESHOLD_HEADER} must be in (0, 1], got {t}")
    return t
