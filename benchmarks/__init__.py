"""Benchmarks: network emulation, latency, load and reliability runs against the live system."""
