"""Where the edge-exit path's time goes, and the candidates measured before choosing one hop.

    python -m benchmarks.edge_hop --out docs/results/edge_hop

For each image size and TorchServe batching setting (`--batching`, batch size : delay ms), one
archive set (`benchmarks.synthetic`: random early-exit MobileNetV2 + the trained classifier) is
served by the live system (`benchmarks.live`; every server process on CPU 0, this client on CPU 1)
with the classifier registered on the edge TorchServe as well, and single-client p50 is taken of:

- `ping`: TorchServe's frontend alone (Java);
- `describe`: a round trip to a Python worker whose handler does nothing (returns the manifest):
  the floor of any TorchServe hop;
- `classifier_torchserve`: the classifier as its own TorchServe hop (the earlier design);
- `classifier_in_router`: the router's own classifier step (`timings_ms.classifier_ms`);
- `edge_direct`: the expert's edge segments straight on TorchServe (first branch answers);
- `router_edge_exit`: the whole edge-exit path through the router (one TorchServe hop);

and the router's edge-exit throughput with 16 clients. `--requests` sequential requests each,
after `--warmup`. Writes edge_hop.json and edge_hop.md under `--out`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from benchmarks.live import LiveSystem
from benchmarks.loadgen import LoadClient, percentiles
from benchmarks.peers import CLIENT_CPU, SERVER_CPU, image_bodies, pin_client
from benchmarks.synthetic import EXPERTS, build_store
from core.cli import run_cli, write_json
from core.errors import UserInputError

EDGE = [f"edge_{d}" for d in EXPERTS]
CLOUD = [f"cloud_{d}" for d in EXPERTS]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument(
        "--batching",
        nargs="+",
        default=["8:2", "8:1", "1:1"],
        help="TorchServe batch size : max batch delay (ms), one archive set each",
    )
    p.add_argument("--classifier", default="models/torch/classifier.pt")
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seconds", type=float, default=6.0, help="the 16-client throughput run")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="docs/results/edge_hop")
    return p


def p50(session: requests.Session, args, send) -> float:
    ms = []
    for i in range(args.warmup + args.requests):
        t = time.perf_counter()
        r = send(session, i)
        if r.status_code != 200:
            raise RuntimeError(f"answered {r.status_code}: {r.text[:200]}")
        if i >= args.warmup:
            ms.append((time.perf_counter() - t) * 1000)
    return percentiles(ms)["p50_ms"]


def measure(store: Path, run_dir: Path, bodies: list[bytes], args) -> dict:
    cpu = str(SERVER_CPU)
    with LiveSystem(
        store,
        run_dir,
        edge_models=[*EDGE, "distortion_classifier"],
        cloud_models=CLOUD,
        cpus={"edge": cpu, "cloud": cpu, "router": cpu},
        router_options=["--deadline-ms", "30000"],
    ) as system:
        edge = system.insts["edge"].inference_url
        ts = requests.Session()
        ts.headers.update(system.auth("edge"))
        body = lambda i: bodies[i % len(bodies)]  # noqa: E731
        out = {
            "ping": p50(ts, args, lambda s, i: s.get(f"{edge}/ping")),
            "describe": p50(
                ts,
                args,
                lambda s, i: s.post(
                    f"{edge}/predictions/edge_pristine", data=b"", headers={"X-Describe": "manifest"}
                ),
            ),
            "classifier_torchserve": p50(
                ts, args, lambda s, i: s.post(f"{edge}/predictions/distortion_classifier", data=body(i))
            ),
            "edge_direct": p50(
                ts,
                args,
                lambda s, i: s.post(
                    f"{edge}/predictions/edge_pristine", data=body(i), headers={"X-Exit-Threshold": "0.01"}
                ),
            ),
        }
        steps: list[float] = []

        def via_router(s: requests.Session, i: int) -> requests.Response:
            r = s.post(f"{system.url}/v1/classify", data=body(i), params={"threshold": 0.01})
            if r.status_code == 200:
                steps.append(r.json()["timings_ms"]["classifier_ms"])
            return r

        out["router_edge_exit"] = p50(requests.Session(), args, via_router)
        out["classifier_in_router"] = round(float(np.median(steps[args.warmup :])), 2)
        load = LoadClient(system.url, bodies, clients=16, params={"threshold": 0.01}, keep_answers=False)
        out["router_edge_exit_16_clients_rps"] = load.run(seconds=args.seconds)["throughput_rps"]
    return out


def main(args: argparse.Namespace) -> dict:
    batching = []
    for b in args.batching:
        try:
            size, delay = (int(x) for x in b.split(":"))
        except ValueError:
            raise UserInputError(f"--batching {b!r}: expected SIZE:DELAY_MS, e.g. 8:1") from None
        batching.append((size, delay))
    started = time.time()
    result = {**pin_client(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="edge_hop_") as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            build_store(size, folder, classifier=args.classifier, data_root=args.data_root)
            bodies = image_bodies(size, 32, args.data_root)
            for bs, delay in batching:
                store = folder / f"store_{bs}_{delay}"
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "export.archive",
                        "--exported",
                        str(folder / "exported"),
                        "--model-store",
                        str(store),
                        "--batch-size",
                        str(bs),
                        "--max-batch-delay",
                        str(delay),
                        "--only",
                        "distortion_classifier",
                        *EDGE,
                        *CLOUD,
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                row = {
                    "size": size,
                    "batch_size": bs,
                    "max_batch_delay_ms": delay,
                    **measure(store, folder / f"run_{bs}_{delay}", bodies, args),
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
        "| size | batch:delay | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['batch_size']}:{r['max_batch_delay_ms']} | "
            + " | ".join(str(r[c]) for c in COLUMNS)
            + " |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_cli(main, get_args_parser))
