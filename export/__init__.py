"""ONNX export of the trained segments, parity checks, manifests (and, next, TorchServe archives)."""
