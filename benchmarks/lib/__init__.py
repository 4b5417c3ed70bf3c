"""What the experiments share; nothing here is an experiment.

- `live`: `LiveSystem`, the one harness that starts and stops the live system (edge and cloud
  TorchServe, the router; `python -m benchmarks.lib.live up|down` for the demo), with its parts
  (`live_parts`: command lines, readiness probes, processes) and its security (`live_security`);
- `loadgen`: `LoadClient`, the one load client;
- `netem`: the emulated WAN links (`Link`, `Profile`, `PROFILES`), whose self-check is the
  experiment `python -m benchmarks.netem check`;
- `target`: own stack or existing deployment (`--router URL`), and the provenance of results;
- `synthetic`: model stores of any input size with random weights, for the serving experiments;
- `peers_minimal`: the minimal peer server (`python -m benchmarks.lib.peers_minimal`) that
  `benchmarks.peers` and `benchmarks.footprint` measure beside this stack.

This package imports nothing itself: a process started as `python -m benchmarks.lib.<module>`
(the demo's `live`, the minimal peer, whose memory `benchmarks.footprint` measures) loads only
what that module needs.
"""
