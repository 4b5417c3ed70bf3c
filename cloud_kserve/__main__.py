"""`python -m cloud_kserve`: serve the cloud segments with KServe's own ModelServer.

    .venv-kserve/bin/python -m cloud_kserve --model-store model_store --port 8095
    curl http://127.0.0.1:8095/v2/models/cloud_pristine          # metadata
    curl http://127.0.0.1:8095/v2/health/ready                   # readiness; /v2/health/live
    curl http://127.0.0.1:8095/metrics                           # Prometheus

Every `cloud_*.mar` of the model store (or the cloud manifests of an export folder, `--exported`)
becomes a model of the same name at `POST /v2/models/<name>/infer` (`cloud_kserve.predictor`);
a malformed request gets a 400 with a one-line reason before KServe decodes it (`cloud_kserve.guard`).
KServe's REST server listens on every interface, as a pod must; here it listens on `--host`
(loopback unless told otherwise), like the rest of the project. No Kubernetes needed.

Across a WAN it serves HTTPS itself: `--tls-cert` and `--tls-key` (and `--tls-client-ca` for mutual
TLS) go to the uvicorn server KServe runs, whose own options these are (KServe re-reads renewed
files); no terminator in front is needed. In a cluster the mesh's mutual TLS does this instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from core import experts
from core.cli import run_cli
from core.errors import UserInputError
from core.manifest import Manifest


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cloud_kserve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-store", default="model_store", help="folder of cloud_*.mar archives")
    src.add_argument("--exported", default=None, help="an export folder (python -m export) instead")
    p.add_argument("--models", nargs="+", default=["all"], help="model names, or all cloud_* ones")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8095)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model")
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", default=None, help="its private key (PEM)")
    p.add_argument(
        "--tls-client-ca", default=None, help="mutual TLS: clients need a certificate this CA signed"
    )
    return p


def collect(args: argparse.Namespace, unpack_root: Path) -> list[tuple[str, Manifest, Path]]:
    """(model name, manifest, folder) of every cloud segment asked for."""
    if args.exported:
        registry = experts.from_export(args.exported)
    else:
        from export.archive import unpack_store

        store = Path(args.model_store)
        if not store.is_dir():
            raise UserInputError(f"{store} is not a folder (build archives: python -m export.archive)")
        registry = unpack_store(store, unpack_root, role="cloud")
    found = {experts.archive_name("cloud", name): seg for name, seg in registry.cloud.items()}
    wanted = sorted(found) if args.models == ["all"] else args.models
    missing = [m for m in wanted if m not in found]
    if missing or not wanted:
        raise UserInputError(
            f"no cloud segment {', '.join(missing) or '(none found)'}; have: "
            f"{', '.join(sorted(found)) or 'nothing'}"
        )
    return [(name, *found[name]) for name in wanted]


def main(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536 or args.threads < 1:
        raise UserInputError("--port must be 1..65535 and --threads at least 1")
    from edge_router.tls import ServerTls

    tls = ServerTls.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    sys.argv = sys.argv[:1]  # kserve parses the command line at import; it gets none of ours
    import kserve
    from kserve.protocol.rest import server as rest

    from cloud_kserve.guard import OipGuard
    from cloud_kserve.predictor import CloudSegment

    class Server(rest.RESTServer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.config.host = args.host  # KServe hard-codes 0.0.0.0
            for name, value in (tls.uvicorn_options() if tls else {}).items():
                setattr(self.config, name, value)  # uvicorn builds the SSL context at start

        def _add_middlewares(self, app):
            super()._add_middlewares(app)
            app.add_middleware(OipGuard)  # malformed requests: 400 before KServe's decoder

    rest.RESTServer = Server
    import kserve.model_server as model_server

    model_server.RESTServer = Server
    with tempfile.TemporaryDirectory(prefix="cloud_kserve_") as tmp:
        models = [
            CloudSegment(name, manifest, folder, threads=args.threads)
            for name, manifest, folder in collect(args, Path(tmp))
        ]
        for m in models:
            m.load()
        kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
