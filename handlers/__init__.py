"""TorchServe handlers and the onnxruntime segment runners they use (numpy + OpenCV + onnxruntime,
no torch import)."""
