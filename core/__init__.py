"""Torch-free core shared by training, export, handlers, router and benchmarks.

One implementation each of: image decoding and preprocessing (`imaging`), the distortions
(`distortions`), the classifier's Fourier spectrum (`spectrum`), the exit rule, softmax and
calibration (`exits`), the edge-to-cloud tensor wire (`wire`), the manifest schema (`manifest`),
and the command-line plumbing and user-facing errors (`cli`, `errors`). Imports only numpy and
OpenCV so the same files ship inside the TorchServe archives. Nothing here imports the other
packages.
"""
