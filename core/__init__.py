"""Torch-free core shared by training, export, handlers, router and benchmarks.

One implementation each of image decoding and preprocessing (`imaging`), the distortions
(`distortions`) and the classifier's Fourier spectrum (`spectrum`). Imports only numpy and OpenCV
so the same files ship inside the TorchServe archives. Nothing here imports the other packages.
"""
