"""One exported cloud segment as a `kserve.Model`: the split tensor in, the final exit out.

The request is an Open Inference Protocol (KServe v2) inference request, as the edge already sends
it: one input named as the manifest's split contract (`stage2`), shape [N, ...] with the contract's
per-sample shape, datatype FP32, FP16 or INT8 (with `scale` and `zero_point` in the input's
parameters, `core.wire`), in JSON or with the binary tensor extension. The answer has two outputs
of shape [N]: `class` (INT64) and `confidence` (FP32), and the parameters `expert`, `run_id`,
`exit` and `exit_name` (the final exit, from the manifest). The segment runs in
`handlers.runtime.CloudExpert`, the class the TorchServe handler uses, so both engines give the
same numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from core import wire
from core.manifest import Manifest
from handlers.runtime import CloudExpert

log = logging.getLogger(__name__)
MAX_SAMPLES = 64


class CloudSegment(Model):
    """`name` is the model name clients use (`cloud_<expert>`, as on TorchServe)."""

    def __init__(self, name: str, manifest: Manifest, folder: Path, *, threads: int = 1):
        super().__init__(name)
        if manifest.role != "cloud":
            raise ValueError(f"{name}: a {manifest.role} manifest, not a cloud segment")
        self.manifest, self.folder, self.threads = manifest, Path(folder), threads
        self.contract = manifest.input
        (self.final,) = manifest.exits  # a cloud segment ends in the final exit
        self.expert: CloudExpert | None = None

    def load(self) -> bool:
        self.expert = CloudExpert(self.manifest, self.folder, threads=self.threads)
        self.ready = True
        log.info("%s ready (%s, run %s)", self.name, self.contract.name, self.manifest.run_id)
        return self.ready

    # -- metadata (GET /v2/models/<name>) -----------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": self.contract.name, "datatype": "FP32", "shape": [-1, *self.contract.shape[1:]]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "class", "datatype": "INT64", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
        ]

    # -- inference ---------------------------------------------------------------------------------
    def split_tensor(self, payload: InferRequest) -> np.ndarray:
        """The request's one input as float32 [N, ...], checked against the split contract."""
        if not isinstance(payload, InferRequest) or len(payload.inputs) != 1:
            raise InvalidInput("exactly one input tensor is expected")
        tensor = payload.inputs[0]
        want = tuple(self.contract.shape[1:])
        if tensor.name != self.contract.name or tuple(tensor.shape[1:]) != want:
            raise InvalidInput(
                f"expected tensor {self.contract.name} of shape "
                f"[N, {', '.join(map(str, want))}], got {tensor.name} {list(tensor.shape)}"
            )
        if not 1 <= int(tensor.shape[0]) <= MAX_SAMPLES:
            raise InvalidInput(f"batch of {tensor.shape[0]} outside 1..{MAX_SAMPLES}")
        if tensor.datatype not in ("FP32", "FP16", "INT8"):
            raise InvalidInput(f"datatype {tensor.datatype} not supported (FP32, FP16, INT8)")
        try:
            raw = np.asarray(tensor.as_numpy()).reshape(tensor.shape)
            return wire.to_float32(raw, tensor.datatype, dict(tensor.parameters or {}))
        except wire.WireError as exc:
            raise InvalidInput(str(exc)) from None
        except (ValueError, TypeError) as exc:  # data that does not fill the declared shape
            raise InvalidInput(
                f"tensor data does not match its shape: {' '.join(str(exc).split())[:150]}"
            ) from None

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        x = self.split_tensor(payload)
        conf, pred = self.expert.run_batch(x)
        classes = InferOutput("class", [len(pred)], "INT64")
        classes.set_data_from_numpy(np.asarray(pred, dtype=np.int64), binary_data=False)
        confidence = InferOutput("confidence", [len(conf)], "FP32")
        confidence.set_data_from_numpy(np.asarray(conf, dtype=np.float32), binary_data=False)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[classes, confidence],
            parameters={
                "expert": self.manifest.name,
                "run_id": self.manifest.run_id,
                "exit": self.final.index,
                "exit_name": self.final.name,
            },
        )
