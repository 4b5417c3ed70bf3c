"""Benchmarks: network emulation, latency, load and reliability runs against the live system.

`python -m benchmarks` lists the experiments; `benchmarks.lib` holds what they share.
"""
