"""Send a stream of distorted test images (every routed type) through the live router; print a table.

    python -m benchmarks.stream --router http://127.0.0.1:8000 --per-cell 30 --wires png jpeg:90

Every answer is a live decision of the running system (classifier, expert, exits, offload); the
table gives, per wire (how the device encodes the image: `png`, `jpeg:QUALITY`), distortion and
level: accuracy, how often the router picked the expert of the true distortion, exit distribution,
offload rate, degraded answers, p50 latency and the expert it chose most often. Every wire carries
the same images, so a second wire's table shows its accuracy gap to the first, cell by cell.
Bounded: `--per-cell` images per cell and a `--max-seconds` budget after which it stops by itself.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import Counter

import numpy as np
import requests

from core import distortions
from core.cli import parse_wires, progress, write_json
from core.errors import UserInputError
from edge_router.tls import verified_session
from training.datasets import DistortionPolicy, distorted_image, load_source

DEFAULT_CELLS = (
    "pristine:0",
    "gaussian_blur:1",
    "gaussian_blur:3",
    "gaussian_blur:5",
    "gaussian_noise:10",
    "gaussian_noise:20",
    "gaussian_noise:40",
    "motion_blur:11",
    "motion_blur:27",
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.stream",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--router", default="http://127.0.0.1:8000")
    p.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), help="type:level pairs")
    p.add_argument("--per-cell", type=int, default=30)
    p.add_argument("--size", type=int, default=64, help="image size sent (the models' input size)")
    p.add_argument(
        "--wires",
        nargs="+",
        default=["png"],
        help="how the device encodes each image: png, jpeg:QUALITY (4:2:0, as cameras do) or "
        "jpeg:QUALITY:444; every wire sends the same images",
    )
    p.add_argument("--threshold", type=float, default=None, help="p_tar (default: the router's)")
    p.add_argument("--compression", default="fp32")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-seconds", type=float, default=600)
    p.add_argument(
        "--expected",
        default=None,
        metavar="CSV",
        help="accuracy.csv of the served models (python -m training.evaluate): print its "
        "value for the same wire beside each live cell and fail (exit 1) when a live "
        "accuracy is more than three binomial standard errors away from it",
    )
    p.add_argument(
        "--expected-model",
        default="expert_routed",
        help="the CSV row the live system corresponds to (routed frozen-BN experts)",
    )
    p.add_argument(
        "--security-dir",
        default=None,
        help="a router on HTTPS with device keys: the folder with its CA and this device's key "
        "(`benchmarks.lib.live up --security tls` writes run-dir/security)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def parse_cells(cells: list[str]) -> list[tuple[str, float]]:
    out = []
    for c in cells:
        name, _, level = c.partition(":")
        try:
            lvl = float(level or 0)
        except ValueError:
            raise UserInputError(f"cell {c!r}: level is not a number") from None
        if name != "pristine":
            distortions.get(name)
            if lvl not in distortions.get(name).levels:
                raise UserInputError(f"cell {c!r}: level not among {distortions.get(name).levels}")
        out.append((name, lvl))
    return out


def main(args: argparse.Namespace) -> dict:
    if args.per_cell < 1 or args.max_seconds <= 0:
        raise UserInputError("--per-cell and --max-seconds must be positive")
    cells = parse_cells(args.cells)
    wires = parse_wires(args.wires)
    source = load_source(args.data, "test", limit=args.per_cell, data_root=args.data_root)
    params = {"compression": args.compression}
    if args.threshold is not None:
        params["threshold"] = args.threshold
    session = requests.Session()
    if args.security_dir:
        from benchmarks.lib.live_security import device_options

        options = device_options(args.security_dir)
        session = verified_session(options["verify"], options.get("cert"), options["headers"])
    stop_at = time.time() + args.max_seconds
    rows, records = [], []
    for wire in wires:
        for name, level in cells:
            policy = DistortionPolicy(fixed=(name, level), seed=args.seed)
            cell = []
            for i in progress(range(len(source)), desc=f"{wire} {name} {level:g}", quiet=args.quiet):
                if time.time() > stop_at:
                    break
                image, label = distorted_image(source, i, args.size, policy)[0], source.label(i)
                cell.append(
                    {"wire": str(wire), "distortion": name, "level": level, "index": i, "label": int(label)}
                    | ask(session, f"{args.router}/v1/classify", wire.encode(image), params)
                )
            records += cell
            rows.append(summarise(cell, wire=str(wire), distortion=name, level=level))
    add_gaps(rows)
    if args.expected:
        compare_with_expected(
            rows,
            args.expected,
            model=args.expected_model,
            p_tar=args.threshold if args.threshold is not None else 0.8,
        )
    print_table(rows)
    result = {"router": args.router, "params": params, "wires": [str(w) for w in wires], "rows": rows}
    result["requests"] = len(records)
    if args.json:
        write_json(args.json, {**result, "records": records})
    outside = [r for r in rows if r.get("within_3se") is False]
    if outside:
        cells = ", ".join(f"{r['wire']} {r['distortion']} {r['level']:g}" for r in outside)
        print(
            f"error: live accuracy more than 3 standard errors from {args.expected} in: {cells}",
            file=sys.stderr,
        )
        return 1
    return result


def ask(session: requests.Session, url: str, body: bytes, params: dict) -> dict:
    """One request; its status, latency and the answer's fields (status 0: no HTTP answer)."""
    t = time.perf_counter()
    try:
        r = session.post(url, data=body, params=params, timeout=30)
        json_body = r.headers.get("Content-Type", "").startswith("application/json")
        status, answer = r.status_code, (r.json() if json_body else {})
    except requests.RequestException as exc:
        status, answer = 0, {"error": type(exc).__name__}
    return {
        "status": status,
        "latency_ms": (time.perf_counter() - t) * 1000,
        "bytes_sent": len(body),
        "routed_distortion": answer.get("distortion"),
        "fallback": bool(answer.get("fallback")),
        **{k: answer.get(k) for k in ("class", "exit", "expert", "offloaded", "degraded", "offloaded_bytes")},
    }


def summarise(cell: list[dict], **key) -> dict:
    """One table row from the records of one (wire, distortion, level) cell."""
    ok = [r for r in cell if r["status"] == 200]
    exits = Counter(r["exit"] for r in ok)
    # the expert of the true distortion: the pristine one for level 0 of any type
    true_distortion = "pristine" if key["level"] == 0 else key["distortion"]
    return {
        **key,
        "n": len(cell),
        "errors": len(cell) - len(ok),
        "accuracy": float(np.mean([r["class"] == r["label"] for r in ok])) if ok else None,
        "routed_right": float(np.mean([r["routed_distortion"] == true_distortion for r in ok]))
        if ok
        else None,
        "exit_share": {str(k): exits.get(k, 0) / max(len(ok), 1) for k in range(4)},
        "offload_rate": float(np.mean([bool(r["offloaded"]) for r in ok])) if ok else None,
        "degraded": sum(bool(r["degraded"]) for r in ok),
        "p50_ms": float(np.median([r["latency_ms"] for r in ok])) if ok else None,
        "mean_bytes": float(np.mean([r["bytes_sent"] for r in cell])) if cell else None,
        "expert": Counter(r["expert"] for r in ok).most_common(1)[0][0] if ok else None,
        # answers from the expert the classifier manifest names while the routed one is away
        "fallbacks": sum(r.get("fallback", False) for r in ok),
    }


def add_gaps(rows: list[dict]) -> None:
    """`gap_points`: a row's accuracy minus the first wire's on the same cell (the same images)."""
    first = rows[0]["wire"] if rows else None
    base = {(r["distortion"], r["level"]): r["accuracy"] for r in rows if r["wire"] == first}
    for r in rows:
        ref = base.get((r["distortion"], r["level"]))
        if r["wire"] != first and ref is not None and r["accuracy"] is not None:
            r["gap_points"] = 100 * (r["accuracy"] - ref)


def compare_with_expected(rows: list[dict], csv_path: str, *, model: str, p_tar: float) -> None:
    """Add the CSV's accuracy for each cell and whether the live one is within 3 binomial SE.

    The standard error is that of the live cell's own sample: sqrt(p (1 - p) / n) with p the CSV
    value (measured on many more images) and n the live cell's answered images.
    """
    try:
        with open(csv_path, newline="") as f:
            table = list(csv.DictReader(f))
    except OSError as exc:
        raise UserInputError(f"cannot read {csv_path}: {exc.strerror}") from None
    for r in rows:
        match = [
            t
            for t in table
            if t.get("model") == model
            and t.get("wire", "png") == r["wire"]  # rows from before the wire column are PNG
            and t.get("distortion") == r["distortion"]
            and float(t.get("level", "nan")) == r["level"]
            and abs(float(t.get("p_tar", "nan")) - p_tar) < 1e-9
        ]
        if not match:
            raise UserInputError(
                f"{csv_path} has no row for {model}, {r['wire']}, {r['distortion']} {r['level']:g}, "
                f"p_tar {p_tar:g}"
            )
        p = float(match[0]["overall_acc"])
        n = r["n"] - r["errors"]
        se = math.sqrt(p * (1 - p) / n) if n else float("nan")
        r.update(
            {
                "expected_accuracy": p,
                "expected_n": int(match[0]["n"]),
                "se": se,
                "within_3se": (r["accuracy"] is not None and abs(r["accuracy"] - p) <= 3 * se),
            }
        )


def print_table(rows: list[dict]) -> None:
    expected = any("expected_accuracy" in r for r in rows)
    gaps = any("gap_points" in r for r in rows)
    ref = f" {'csv %':>6s} {'3 SE':>5s} {'ok':>3s}" if expected else ""
    gap = f" {'gap':>5s}" if gaps else ""
    print(
        f"\n{'wire':9s} {'distortion':16s} {'level':>5s} {'n':>4s} {'acc %':>6s}{gap}{ref} {'routed %':>8s} "
        f"{'exits b0/b1/b2/final %':>23s} {'offload %':>9s} {'degr':>4s} {'p50 ms':>7s}  expert"
    )
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        routed = "-" if r["routed_right"] is None else f"{100 * r['routed_right']:.0f}"
        ex = "/".join(f"{100 * r['exit_share'][str(k)]:.0f}" for k in range(4))
        off = "-" if r["offload_rate"] is None else f"{100 * r['offload_rate']:.0f}"
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        errors = f"  ({r['errors']} errors)" if r["errors"] else ""
        if r.get("fallbacks"):
            errors = f" (fallback for {r['fallbacks']}){errors}"
        g = ""
        if gaps:
            g = f" {r['gap_points']:+5.1f}" if "gap_points" in r else f" {'':>5s}"
        ref = ""
        if "expected_accuracy" in r:
            ref = (
                f" {100 * r['expected_accuracy']:6.1f} {300 * r['se']:5.1f} "
                f"{'yes' if r['within_3se'] else 'NO':>3s}"
            )
        print(
            f"{r['wire']:9s} {r['distortion']:16s} {r['level']:5g} {r['n']:4d} {acc:>6s}{g}{ref} "
            f"{routed:>8s} {ex:>23s} {off:>9s} {r['degraded']:4d} {p50:>7s}  {r['expert']}{errors}"
        )
    if gaps:
        print("gap: accuracy minus the first wire's on the same images, in points")
