"""The cloud segments on KServe's model server (Open Inference Protocol), beside TorchServe's.

Imports KServe, so it lives apart from the edge: its dependencies are `requirements-kserve.txt`,
installed into their own virtual environment (`.venv-kserve`).
"""
