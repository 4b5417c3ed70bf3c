"""Where the edge-exit path's time goes, and the candidates measured before choosing one hop.

    python -m benchmarks.edge_hop --out docs/results/edge_hop

For each image size and TorchServe setting (`--batching`: batch size : delay ms, and optionally
: the handlers' metrics interval in s, `EE_METRICS_INTERVAL_S`, where 0 emits every metric on its
request as TorchServe's stock handlers do and keeps TorchServe's own per-request log lines), one
archive set (`benchmarks.lib.synthetic`: random early-exit MobileNetV2 + the trained classifier) is
served by the live system (`benchmarks.lib.live`; every server process on CPU 0, this client on CPU 1)
with the classifier registered on the edge TorchServe as well, and single-client p50 is taken of:

- `ping`: TorchServe's frontend alone (Java);
- `describe`: a round trip to a Python worker whose handler does nothing (returns the manifest):
  the floor of any TorchServe hop;
- `classifier_torchserve`: the classifier as its own TorchServe hop (the earlier design);
- `classifier_in_router`: the router's own classifier step (`timings_ms.classifier_ms`);
- `edge_direct`: the expert's edge segments straight on TorchServe (first branch answers);
- `router_edge_exit`: the whole edge-exit path through the router (one TorchServe hop);

and the router's edge-exit throughput with 16 clients. `--requests` sequential requests each on one
keep-alive `http.client` connection, after `--warmup-seconds` of 4-client load and `--warmup`
requests. Writes edge_hop.json and edge_hop.md under `--out`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.loadgen import LoadClient, percentiles
from benchmarks.lib.synthetic import EXPERTS, build_store
from benchmarks.peers.measure import CLIENT_CPU, SERVER_CPU, image_bodies, pin_client
from core.cli import write_json
from core.errors import UserInputError
from core.experts import CLASSIFIER, archive_name

EDGE = [archive_name("edge", d) for d in EXPERTS]
CLOUD = [archive_name("cloud", d) for d in EXPERTS]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.edge_hop",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument(
        "--batching",
        nargs="+",
        default=["8:1", "8:1:0", "1:1"],
        help="TorchServe batch size : max batch delay (ms) [: handler metrics interval (s), default 1], "
        "one archive set each",
    )
    p.add_argument("--classifier", default="models/torch/classifier.pt")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="4-client load first, discarded")
    p.add_argument("--seconds", type=float, default=6.0, help="the 16-client throughput run")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="docs/results/edge_hop")
    return p


class Connection:
    """One keep-alive connection through `http.client`: a lighter client than requests (about 1 ms
    less per call here), so the client's own cost hides less of the milliseconds being compared."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.headers = dict(headers or {})

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path} answered {r.status}: {data[:200]!r}")
        return data


def p50(args, send) -> float:
    ms = []
    for i in range(args.warmup + args.requests):
        t = time.perf_counter()
        send(i)
        if i >= args.warmup:
            ms.append((time.perf_counter() - t) * 1000)
    return percentiles(ms)["p50_ms"]


def measure(store: Path, run_dir: Path, bodies: list[bytes], args, metrics_interval: float) -> dict:
    cpu = str(SERVER_CPU)
    with LiveSystem(
        store,
        run_dir,
        env={"EE_METRICS_INTERVAL_S": repr(metrics_interval)},
        edge_models=[*EDGE, CLASSIFIER],
        cloud_models=CLOUD,
        cpus={"edge": cpu, "cloud": cpu, "router": cpu},
        router_options=["--deadline-ms", "30000"],
    ) as system:
        params = {"threshold": 0.01}
        # warm: TorchServe's JVM compiles its hot paths under load
        LoadClient(system.url, bodies, clients=4, params=params, keep_answers=False).run(
            seconds=args.warmup_seconds, max_requests=20000
        )
        ts = Connection(system.insts["edge"].inference_url, system.auth("edge"))
        body = lambda i: bodies[i % len(bodies)]  # noqa: E731
        out = {
            "ping": p50(args, lambda i: ts.call("GET", "/ping")),
            "describe": p50(
                args, lambda i: ts.call("POST", "/predictions/edge_pristine", b"", {"X-Describe": "manifest"})
            ),
            "classifier_torchserve": p50(
                args, lambda i: ts.call("POST", "/predictions/distortion_classifier", body(i))
            ),
            "edge_direct": p50(
                args,
                lambda i: ts.call(
                    "POST", "/predictions/edge_pristine", body(i), {"X-Exit-Threshold": "0.01"}
                ),
            ),
        }
        steps: list[float] = []
        router = Connection(system.url)

        def via_router(i: int) -> None:
            answer = json.loads(router.call("POST", "/v1/classify?threshold=0.01", body(i)))
            steps.append(answer["timings_ms"]["classifier_ms"])

        out["router_edge_exit"] = p50(args, via_router)
        out["classifier_in_router"] = round(float(np.median(steps[args.warmup :])), 2)
        load = LoadClient(system.url, bodies, clients=16, params=params, keep_answers=False)
        out["router_edge_exit_16_clients_rps"] = load.run(seconds=args.seconds)["throughput_rps"]
    return out


def main(args: argparse.Namespace) -> dict:
    batching = []
    for b in args.batching:
        try:
            parts = b.split(":")
            if len(parts) not in (2, 3):
                raise ValueError
            size, delay = int(parts[0]), int(parts[1])
            interval = float(parts[2]) if len(parts) == 3 else 1.0
        except ValueError:
            raise UserInputError(
                f"--batching {b!r}: expected SIZE:DELAY_MS[:METRICS_S], e.g. 8:1 or 8:1:0"
            ) from None
        batching.append((size, delay, interval))
    started = time.time()
    result = {**pin_client(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="edge_hop_") as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            build_store(size, folder, classifier=args.classifier, data_root=args.data_root)
            bodies = image_bodies(size, 32, args.data_root)
            for bs, delay, interval in batching:
                store = folder / f"store_{bs}_{delay}"
                if not store.exists():
                    archive = [
                        "export.archive",
                        "--exported",
                        str(folder / "exported"),
                        "--model-store",
                        str(store),
                        "--batch-size",
                        str(bs),
                        "--max-batch-delay",
                        str(delay),
                    ]
                    subprocess.run(
                        [sys.executable, "-m", *archive, "--only", CLASSIFIER, *EDGE, *CLOUD],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                row = {
                    "size": size,
                    "batch_size": bs,
                    "max_batch_delay_ms": delay,
                    "metrics_interval_s": interval,
                    **measure(store, folder / f"run_{bs}_{delay}_{interval}", bodies, args, interval),
                }
                result["rows"].append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    result["seconds"] = round(time.time() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "edge_hop.json", result)
    write_markdown(result, out / "edge_hop.md")
    return result


COLUMNS = (
    "ping",
    "describe",
    "classifier_torchserve",
    "classifier_in_router",
    "edge_direct",
    "router_edge_exit",
    "router_edge_exit_16_clients_rps",
)


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# The edge hop: where the edge-exit path's time goes",
        "",
        f"`{result['command']}` ({result['machine']}; servers on CPU {SERVER_CPU}, client on CPU "
        f"{CLIENT_CPU}; {result['seconds']} s). Single-client p50 in ms, throughput in answers/s.",
        "",
        "| size | batch:delay | metrics interval s | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['batch_size']}:{r['max_batch_delay_ms']} | {r['metrics_interval_s']} | "
            + " | ".join(str(r[c]) for c in COLUMNS)
            + " |"
        )
    path.write_text("\n".join(lines) + "\n")
