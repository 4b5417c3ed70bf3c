"""Reliability: fuzzing the live endpoints, fault injection, a soak run and connection abuse.

`python -m benchmarks.reliability --help` (the module `cli`) describes the two modes and the parts.
One module per part, over the system and instruments they share:

- `system`: our own live system or an existing deployment, the router sampler, test images;
- `fuzz`, `faults`, `soak`, `connection_abuse`: the four parts (`--parts`);
- `checks`: what the results must show; `report`: reliability.md;
- `cli`: the options, the run of each mode, and reliability.json across invocations.
"""

from benchmarks.reliability.checks import abuse_checks, must_show, router_rss_overall
from benchmarks.reliability.cli import OWN_STACK_OPTIONS, get_args_parser, load_result, main
from benchmarks.reliability.connection_abuse import control_image
from benchmarks.reliability.faults import KSERVE_SCENARIOS, LINK_SCENARIOS, LOOPBACK_SCENARIOS, fate_table
from benchmarks.reliability.report import write_markdown

__all__ = [
    "KSERVE_SCENARIOS",
    "LINK_SCENARIOS",
    "LOOPBACK_SCENARIOS",
    "OWN_STACK_OPTIONS",
    "abuse_checks",
    "control_image",
    "fate_table",
    "get_args_parser",
    "load_result",
    "main",
    "must_show",
    "router_rss_overall",
    "write_markdown",
]
