"""ONNX export of the trained segments with parity checks and manifests (`python -m export`), the
TorchServe archives (`export.archive`) and the in-process reference pipeline (`export.pipeline`)."""
