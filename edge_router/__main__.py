"""`python -m edge_router`: run the edge router in front of the edge and cloud TorchServe.

    python -m edge_router --port 8000            # instances started by edge_router.torchserve

The TorchServe addresses and key files default to those `python -m edge_router.torchserve start`
uses (`run/edge`, `run/cloud`); the tokens are read from the key files and never logged. The
distortion classifier runs inside the router, loaded from `--classifier` (default: the model
store's `distortion_classifier.mar`, the archive TorchServe would run). SIGTERM drains: no new
connections, the requests in progress are answered, then the process exits.

The cloud tier is one TorchServe instance unless `--cloud` lists endpoints, any number of them:

    --cloud oip=http://10.0.0.5:8080                       # KServe's model server or Triton
    --cloud torchserve=http://h:8090,http://h:8091,run/cloud/key_file.json
    --cloud oip=https://10.0.0.5:8443,ca=certs/ca.pem      # this endpoint over verified TLS

Across a WAN, every hop that leaves the box is encrypted and authenticated (`edge_router.tls`):

    --cloud-ca certs/ca.pem          # TLS to every cloud endpoint, its certificate verified; an
                                     # http:// cloud is refused (answers degraded, with the reason)
    --cloud-client-cert/--cloud-client-key    # for a cloud that asks for client certificates
    --tls-cert certs/edge.pem --tls-key certs/edge.key   # the router serves HTTPS
    --tls-client-ca certs/ca.pem     # and only to devices with a certificate this CA signed
    --device-keys run/devices.json   # each device needs its key (python -m edge_router.devices)

On loopback these are off by default; listening on another address without them logs a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from core.cli import run_cli
from core.errors import UserInputError
from core.experts import CLASSIFIER
from core.imaging import DEFAULT_MAX_BYTES
from edge_router import adaptive
from edge_router.app import Router, RouterConfig, make_server
from edge_router.classifier import LocalClassifier
from edge_router.cloud import POLICIES
from edge_router.devices import DeviceKeys
from edge_router.discovery import Discovery, Endpoint
from edge_router.tls import ClientTls, ServerTls
from edge_router.tokens import KeyFile
from edge_router.torchserve import instance


def get_args_parser() -> argparse.ArgumentParser:
    d = RouterConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address devices connect to")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run-dir", default="run", help="working folders of the TorchServe instances")
    p.add_argument(
        "--model-store",
        default="model_store",
        help=f"where {CLASSIFIER}.mar is (the classifier the router runs in process)",
    )
    p.add_argument(
        "--classifier",
        default=None,
        help=f"the classifier: a {CLASSIFIER}.mar or an export folder (overrides --model-store)",
    )
    for role in ("edge", "cloud"):
        p.add_argument(f"--{role}-url", default=None, help=f"{role} inference API (default: local instance)")
        p.add_argument(f"--{role}-management-url", default=None, help=f"{role} management API")
        p.add_argument(f"--{role}-key-file", default=None, help=f"{role} key_file.json")
    p.add_argument(
        "--cloud",
        action="append",
        default=[],
        metavar="KIND=URL",
        help="a cloud endpoint (repeat for several): oip=URL, or torchserve=INFERENCE_URL,"
        "MANAGEMENT_URL,KEY_FILE; default: the local cloud TorchServe",
    )
    p.add_argument(
        "--cloud-policy",
        default=d.cloud_policy,
        choices=POLICIES,
        help="how offloads are spread over the cloud endpoints",
    )
    p.add_argument("--threshold", type=float, default=d.default_threshold, help="default p_tar")
    p.add_argument(
        "--deadline-ms", type=float, default=d.default_deadline_ms, help="default per-request deadline"
    )
    p.add_argument("--refresh-s", type=float, default=5.0, help="expert discovery period")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=d.max_in_flight,
        help="requests answered at once; beyond it an immediate 503 with Retry-After",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest image accepted (413 beyond)"
    )
    p.add_argument(
        "--max-buffered-mb",
        type=float,
        default=d.max_buffered_bytes / 2**20,
        help="request bodies held at once (503 beyond)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=d.header_timeout_s,
        help="a request's headers must arrive within this (slow or idle clients are closed)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=d.body_timeout_s,
        help="a request's body must arrive within this after its headers (408 beyond)",
    )
    p.add_argument(
        "--keepalive-s",
        type=float,
        default=d.keepalive_s,
        help="idle keep-alive connections are closed after this",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=d.drain_s,
        help="on SIGTERM, how long the requests in progress may still take",
    )
    p.add_argument(
        "--offload-policy",
        choices=adaptive.POLICIES,
        default="fixed",
        help="fixed: offload whenever no side branch reaches the threshold (the paper's rule); "
        "adaptive: only when the offload can finish before the deadline and its expected accuracy "
        "gain is worth its expected time (requests may choose with offload=)",
    )
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="default accuracy target: each expert's threshold from its operating-point table "
        "(requests may set min_accuracy=); default none, the --threshold serves",
    )
    p.add_argument(
        "--min-gain-per-second",
        type=float,
        default=10.0,
        help="adaptive: accuracy points (of 100) that one second of expected offload time must buy",
    )
    sec = p.add_argument_group("security (TLS and device keys; see edge_router.tls, edge_router.devices)")
    sec.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate chain (PEM)")
    sec.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    sec.add_argument(
        "--tls-client-ca", default=None, help="mutual TLS: clients need a certificate signed by this CA"
    )
    sec.add_argument(
        "--device-keys", default=None, help="device keys file: every request but /healthz needs a key"
    )
    sec.add_argument(
        "--cloud-ca",
        default=None,
        help="CA bundle of the cloud's certificates: TLS required and verified on every cloud endpoint",
    )
    sec.add_argument("--cloud-client-cert", default=None, help="client certificate for the cloud (PEM)")
    sec.add_argument("--cloud-client-key", default=None, help="its private key (PEM)")
    p.add_argument("--log-level", default="INFO")
    return p


def cloud_tls(args: argparse.Namespace, ca: str | None = None) -> ClientTls | None:
    """The TLS of a cloud endpoint: its own `ca=` or --cloud-ca, with the client certificate
    (commands that share `endpoint` without these flags get none)."""
    return ClientTls.from_flags(
        ca or getattr(args, "cloud_ca", None),
        getattr(args, "cloud_client_cert", None),
        getattr(args, "cloud_client_key", None),
    )


def endpoint(role: str, args: argparse.Namespace) -> Endpoint:
    inst = instance(role, run_dir=args.run_dir)
    key_file = Path(getattr(args, f"{role}_key_file") or inst.key_file)
    management_url = getattr(args, f"{role}_management_url") or inst.management_url
    return Endpoint(
        name=role,
        inference_url=getattr(args, f"{role}_url") or inst.inference_url,
        management_url=management_url,
        keys=KeyFile(key_file, management_url),
        # the local cloud instance started with TLS (its tls.json) is verified against its own CA
        tls=cloud_tls(args, getattr(args, "cloud_ca", None) or (inst.tls or {}).get("ca_file"))
        if role == "cloud"
        else None,
    )


def cloud_endpoints(args: argparse.Namespace) -> list[Endpoint]:
    if not args.cloud:
        return [endpoint("cloud", args)]
    out = []
    for i, spec in enumerate(args.cloud):
        kind, _, rest = spec.partition("=")
        parts = rest.split(",")
        options = dict(p.split("=", 1) for p in parts if "=" in p)  # per-endpoint: ca=FILE
        parts = [p for p in parts if "=" not in p]
        if set(options) - {"ca"}:
            raise UserInputError(f"--cloud {spec!r}: the one option an endpoint takes is ca=FILE")
        tls = cloud_tls(args, options.get("ca"))
        if kind == "oip" and len(parts) == 1 and parts[0].startswith(("http://", "https://")):
            out.append(Endpoint(name=f"cloud{i}", inference_url=parts[0].rstrip("/"), kind="oip", tls=tls))
        elif kind == "torchserve" and len(parts) == 3 and all(parts):
            out.append(
                Endpoint(
                    name=f"cloud{i}",
                    inference_url=parts[0].rstrip("/"),
                    management_url=parts[1].rstrip("/"),
                    keys=KeyFile(Path(parts[2]), parts[1]),
                    tls=tls,
                )
            )
        else:
            raise UserInputError(
                f"--cloud {spec!r}: expected oip=URL or torchserve=INFERENCE_URL,MANAGEMENT_URL,KEY_FILE"
                " (either optionally followed by ,ca=FILE)"
            )
    return out


def exposure_warnings(args: argparse.Namespace, clouds: list[Endpoint]) -> list[str]:
    """What an operator should hear at start: a router reachable beyond loopback without TLS or
    device keys, and cloud endpoints reached in the clear off this machine."""
    out = []
    if not is_loopback(args.host):
        if args.tls_cert is None:
            out.append(
                f"listening on {args.host} without TLS (--tls-cert, --tls-key): images cross in the clear"
            )
        if args.device_keys is None and args.tls_client_ca is None:
            out.append(
                f"listening on {args.host} without device authentication (--device-keys or --tls-client-ca)"
            )
    for ep in clouds:
        host = ep.inference_url.split("/")[2].rsplit(":", 1)[0].strip("[]")
        if ep.tls is None and not is_loopback(host):
            out.append(
                f"cloud endpoint {ep.name} ({ep.inference_url}) without TLS (--cloud-ca): "
                "tensors and token in the clear"
            )
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from(args: argparse.Namespace) -> RouterConfig:
    if not 0 < args.threshold <= 1:
        raise UserInputError("--threshold must be in (0, 1]")
    if args.min_accuracy is not None and not 0 < args.min_accuracy <= 1:
        raise UserInputError("--min-accuracy must be in (0, 1]")
    if args.min_gain_per_second < 0:
        raise UserInputError("--min-gain-per-second must not be negative")
    for name in (
        "deadline_ms",
        "refresh_s",
        "max_in_flight",
        "max_body_bytes",
        "max_buffered_mb",
        "header_timeout_s",
        "body_timeout_s",
        "keepalive_s",
        "drain_s",
    ):
        if getattr(args, name) <= 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be positive")
    return RouterConfig(
        default_threshold=args.threshold,
        default_deadline_ms=args.deadline_ms,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        max_buffered_bytes=int(args.max_buffered_mb * 2**20),
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        keepalive_s=args.keepalive_s,
        drain_s=args.drain_s,
        cloud_policy=args.cloud_policy,
        offload_policy=args.offload_policy,
        min_accuracy=args.min_accuracy,
        min_gain_per_second=args.min_gain_per_second,
    )


def raise_open_file_limit() -> None:
    """Each connection is a file descriptor; the usual soft limit of 1,024 would refuse connections
    long before memory or the event loop run short (the hard limit is the administrator's cap)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    raise_open_file_limit()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server_tls = ServerTls.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    devices = DeviceKeys(args.device_keys) if args.device_keys else None
    clouds = cloud_endpoints(args)
    classifier = LocalClassifier(args.classifier or Path(args.model_store) / f"{CLASSIFIER}.mar")
    discovery = Discovery(
        endpoint("edge", args),
        clouds,
        classifier=classifier.manifest,
        refresh_s=args.refresh_s,
    )
    discovery.start()
    router = Router(discovery, classifier, config, devices=devices)
    server = make_server(router, args.host, args.port, log_level=args.log_level, tls=server_tls)
    cat = discovery.catalogue
    log = logging.getLogger("edge_router")
    for warning in exposure_warnings(args, clouds):
        log.warning("%s", warning)
    log.info(
        "listening on %s://%s:%d%s%s; experts: %s; refused: %s",
        "https" if server_tls else "http",
        args.host,
        args.port,
        " (mutual TLS)" if server_tls and server_tls.client_ca else "",
        " (device keys)" if devices else "",
        ", ".join(sorted(cat.experts)) or "none",
        ", ".join(sorted(cat.refused)) or "none",
    )
    try:
        server.run()  # SIGTERM/SIGINT: uvicorn's graceful shutdown (drain)
    finally:
        discovery.stop()
    if not server.started:
        raise UserInputError(f"cannot listen on {args.host}:{args.port} (in use?)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
