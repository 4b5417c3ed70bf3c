"""Start, stop and inspect the edge and cloud TorchServe instances on one machine.

    python -m edge_router.torchserve start edge --model-store model_store --models all
    python -m edge_router.torchserve start cloud --model-store model_store --models all
    python -m edge_router.torchserve status
    python -m edge_router.torchserve stop edge

Each instance gets its own ports (HTTP and gRPC), working folder (`run/<role>/`: the generated
`config.properties`, `key_file.json`, `logs/`, `tmp/`) and TMPDIR, as two TorchServe processes on
one machine need. The configuration is the repository's `config.properties` (token auth on,
loopback only, registration limited to the local model store) with the instance's ports and paths
filled in. `--models all` registers every archive of the model store whose name matches the role
(edge: the classifier and `edge_*`; cloud: `cloud_*`). `start` returns once `/ping` says Healthy.

`--tls-cert`, `--tls-key` (and `--tls-ca`, the CA that signed them) serve every API of the instance
over HTTPS with TorchServe's own `certificate_file` and `private_key_file`: the cloud instance
across a WAN. The instance's folder then holds `tls.json`, so every command here (and the router's
defaults) reaches it at https:// and verifies it against that CA.

    python -m edge_router.pki ca --out certs && python -m edge_router.pki issue cloud --out certs
    python -m edge_router.torchserve start cloud --tls-cert certs/cloud.pem --tls-key certs/cloud.key \
        --tls-ca certs/ca.pem
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from core import experts
from core.cli import run_cli
from core.errors import UserInputError
from edge_router.tokens import KINDS, parse_key_file

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = Path(sys.prefix) / "share" / "distortion-aware-early-exit"  # setup.cfg's data_files


def _asset(name: str) -> Path:
    """A serving file of the repository root in a checkout; else where `pip install` put it."""
    local = ROOT / name
    return local if local.is_file() or not (INSTALLED / name).is_file() else INSTALLED / name


TEMPLATE = _asset("config.properties")
LOG_CONFIG = _asset("log4j2.xml")
# the workers' stand-in for PyTorch (handlers/worker_env/torch/__init__.py says why)
WORKER_ENV = ROOT / "handlers" / "worker_env"
WORKER_TORCH = ("stub", "real")


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


DEFAULT_PORTS = {
    "edge": Ports(8080, 8081, 8082, 7070, 7071),
    "cloud": Ports(8090, 8091, 8092, 7090, 7091),
}
# The distortion classifier runs inside the router (one TorchServe hop on the edge), so `all` on the
# edge means the experts' edge segments; its archive can still be registered by name.
ARCHIVE_ROLES = {"edge": ("edge",), "cloud": ("cloud", "full")}


@dataclass
class Instance:
    """Where one TorchServe instance lives and how to reach it."""

    role: str
    workdir: Path
    ports: Ports
    host: str = "127.0.0.1"

    @property
    def tls(self) -> dict | None:
        """{cert_file, key_file, ca_file} when the instance serves HTTPS (written by `start`)."""
        path = self.workdir / "tls.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def verify(self) -> str | bool:
        """`requests`' verify= for this instance: its CA bundle under TLS."""
        tls = self.tls
        return tls["ca_file"] if tls else True

    @property
    def inference_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.ports.metrics}"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def keys(self) -> dict[str, str]:
        """The instance's tokens ('inference', 'management'); never printed or logged."""
        return read_keys(self.key_file)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TMPDIR=str(self.workdir / "tmp"),
            LOG_LOCATION=str(self.workdir / "logs"),
            METRICS_LOCATION=str(self.workdir / "logs"),
        )
        return env


def read_keys(path: Path) -> dict[str, str]:
    """The tokens ('inference', 'management') in a key file right now (the router keeps them fresh
    with `edge_router.tokens.KeyFile`; this is for one-off commands)."""
    return {kind: key for kind, (key, _) in parse_key_file(path).items() if kind in KINDS}


def instance(
    role: str, *, run_dir: str | Path = "run", ports: Ports | None = None, host: str = "127.0.0.1"
) -> Instance:
    if role not in DEFAULT_PORTS:
        raise UserInputError(f"unknown role {role!r} (edge or cloud)")
    return Instance(
        role=role, workdir=Path(run_dir).resolve() / role, ports=ports or DEFAULT_PORTS[role], host=host
    )


def template_value(key: str) -> str:
    """A setting of the repository's config.properties ('' when it sets none)."""
    for line in TEMPLATE.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and name.strip() == key:
            return value.strip()
    return ""


def render_config(inst: Instance, model_store: Path) -> str:
    """The repository's config.properties with this instance's addresses and paths."""
    values = {
        "inference_address": inst.inference_url,
        "management_address": inst.management_url,
        "metrics_address": inst.metrics_url,
        "grpc_inference_port": str(inst.ports.grpc_inference),
        "grpc_management_port": str(inst.ports.grpc_management),
        "model_store": str(model_store),
        # Java's own temp folder (model extraction) per instance, beside TMPDIR's pid file; the
        # repository's log4j2.xml (no per-request DEBUG/INFO lines, each written twice, on the hop).
        # the JVM's sizing from the template (an edge box's), plus this instance's folders
        "vmargs": f"{template_value('vmargs')} -Djava.io.tmpdir={inst.workdir / 'tmp'} "
        f"-Dlog4j.configurationFile={LOG_CONFIG.as_uri()}".strip(),
    }
    tls = inst.tls
    if tls:  # TorchServe's own HTTPS (Netty): a PEM chain and a PKCS#8 key
        values.update(certificate_file=tls["cert_file"], private_key_file=tls["key_file"])
    lines, seen = [], set()
    for line in TEMPLATE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.startswith("#") and "=" in line and key in values:
            lines.append(f"{key}={values[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in values.items() if k not in seen]
    return "\n".join(lines) + "\n"


def archives_for(role: str, model_store: Path, models: list[str]) -> list[str]:
    available = sorted(p.stem for p in model_store.glob("*.mar"))
    if models == ["all"]:
        chosen = [m for m in available if (experts.parse_archive_name(m) or ("",))[0] in ARCHIVE_ROLES[role]]
    else:
        chosen = models
    missing = [m for m in chosen if m not in available]
    if missing:
        raise UserInputError(f"not in {model_store}: {', '.join(missing)} (run python -m export.archive)")
    return chosen


def torchserve_bin() -> str:
    return str(Path(sys.executable).parent / "torchserve")


def ping(inst: Instance, timeout: float = 2.0) -> bool:
    """Healthy on /ping (which needs the inference token while token auth is on)."""
    try:
        token = inst.keys()["inference"] if inst.key_file.is_file() else ""
    except UserInputError:
        token = ""
    try:
        r = requests.get(
            f"{inst.inference_url}/ping",
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=inst.verify,
        )
        return r.status_code == 200 and r.json().get("status") == "Healthy"
    except (requests.RequestException, ValueError):
        return False


def start(
    inst: Instance,
    model_store: str | Path,
    models: list[str],
    *,
    wait_s: float = 120,
    extra_env: dict[str, str] | None = None,
    worker_torch: str = "stub",
    tls: dict[str, str] | None = None,
) -> Instance:
    """Start `inst` with `models` of `model_store` registered, and wait until they are READY.

    `worker_torch`: 'stub' puts `handlers/worker_env` first on the workers' PYTHONPATH, so that
    TorchServe's `import torch` in each worker finds the stand-in there (0.1 MB instead of about
    480 MB RSS per worker; see that module); 'real' leaves the installed PyTorch to it."""
    if worker_torch not in WORKER_TORCH:
        raise UserInputError(f"worker torch {worker_torch!r}: one of {', '.join(WORKER_TORCH)}")
    store = Path(model_store).resolve()
    if not store.is_dir():
        raise UserInputError(f"model store {store} does not exist (run python -m export.archive)")
    chosen = archives_for(inst.role, store, models)
    if ping(inst):
        raise UserInputError(f"something already answers on {inst.inference_url}: stop it first")
    for sub in ("tmp", "logs"):
        (inst.workdir / sub).mkdir(parents=True, exist_ok=True)
    tls_file = inst.workdir / "tls.json"
    tls_file.unlink(missing_ok=True)  # a plain start after a TLS one must not look like TLS
    if tls:
        missing = [f"--tls-{k.split('_')[0]}" for k in ("cert_file", "key_file", "ca_file") if not tls.get(k)]
        if missing or not all(Path(v).is_file() for v in tls.values()):
            raise UserInputError("TLS needs --tls-cert, --tls-key and --tls-ca, each an existing file")
        tls_file.write_text(json.dumps({k: str(Path(v).resolve()) for k, v in tls.items()}))
    config = inst.workdir / "config.properties"
    config.write_text(render_config(inst, store))
    cmd = [torchserve_bin(), "--start", "--ncs", "--ts-config", str(config), "--model-store", str(store)]
    if chosen:
        cmd += ["--models", *[f"{m}={m}.mar" for m in chosen]]
    env = inst.env()
    env.update(extra_env or {})
    if worker_torch == "stub":  # the workers inherit the frontend's environment
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WORKER_ENV), env.get("PYTHONPATH")) if p)
    with open(inst.workdir / "logs" / "launcher.log", "ab") as out:
        subprocess.run(
            cmd, cwd=inst.workdir, env=env, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=60
        )
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if ping(inst) and (not chosen or _models_ready(inst, chosen)):
            return inst
        time.sleep(0.5)
    stop(inst)
    raise RuntimeError(
        f"TorchServe {inst.role} did not become healthy in {wait_s:.0f} s; see {inst.workdir / 'logs'}"
    )


def _models_ready(inst: Instance, models: list[str]) -> bool:
    try:
        headers = {"Authorization": f"Bearer {inst.keys()['management']}"}
        for m in models:
            r = requests.get(
                f"{inst.management_url}/models/{m}", headers=headers, timeout=2, verify=inst.verify
            )
            if r.status_code != 200 or not any(
                w.get("status") == "READY" for v in r.json() for w in v.get("workers", [])
            ):
                return False
        return True
    except (requests.RequestException, UserInputError, ValueError):
        return False


def stop(inst: Instance, *, wait_s: float = 30) -> None:
    subprocess.run(
        [torchserve_bin(), "--stop"],
        cwd=inst.workdir if inst.workdir.is_dir() else None,
        env=inst.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=60,
    )
    deadline = time.time() + wait_s
    while time.time() < deadline and ping(inst, timeout=0.5):
        time.sleep(0.3)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "role",
        nargs="?",
        choices=("edge", "cloud"),
        default=None,
        help="instance (status: both when omitted)",
    )
    p.add_argument("--model-store", default="model_store")
    p.add_argument(
        "--models",
        nargs="*",
        default=["all"],
        help="archive names to register at start, or 'all' for the role's archives",
    )
    p.add_argument("--run-dir", default="run", help="parent of the instances' working folders")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (keep loopback unless inside an isolated namespace)",
    )
    p.add_argument("--wait-s", type=float, default=120, help="how long start waits for Healthy")
    p.add_argument(
        "--worker-torch",
        choices=WORKER_TORCH,
        default="stub",
        help="what TorchServe's `import torch` finds in a worker: 'stub', the stand-in of "
        "handlers/worker_env (our handlers never use torch; about 480 MB less per worker), or "
        "'real', the installed PyTorch (for handlers of your own that need it)",
    )
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", default=None, help="its private key (PEM, PKCS#8)")
    p.add_argument("--tls-ca", default=None, help="the CA that signed it (to check the instance is up)")
    p.add_argument(
        "--ports",
        type=int,
        nargs=5,
        default=None,
        metavar=("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INF", "GRPC_MGMT"),
        help="the instance's ports (default: edge 8080-8082/7070-7071, cloud 8090-8092/7090-7091)",
    )
    return p


def main(args: argparse.Namespace) -> int:
    roles = [args.role] if args.role else ["edge", "cloud"]
    if args.action != "status" and not args.role:
        raise UserInputError(f"{args.action} needs a role: edge or cloud")
    for role in roles:
        inst = instance(
            role, run_dir=args.run_dir, host=args.host, ports=Ports(*args.ports) if args.ports else None
        )
        if args.action == "start":
            tls = (
                {"cert_file": args.tls_cert, "key_file": args.tls_key, "ca_file": args.tls_ca}
                if args.tls_cert or args.tls_key or args.tls_ca
                else None
            )
            start(
                inst,
                args.model_store,
                args.models,
                wait_s=args.wait_s,
                worker_torch=args.worker_torch,
                tls=tls,
            )
            print(
                f"{role}: healthy at {inst.inference_url} (management {inst.management_url}, "
                f"metrics {inst.metrics_url}); tokens in {inst.key_file}"
            )
        elif args.action == "stop":
            stop(inst)
            print(f"{role}: stopped")
        else:
            print(f"{role}: {'healthy' if ping(inst) else 'not answering'} at {inst.inference_url}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
