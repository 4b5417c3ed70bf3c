"""A small certificate authority for the system's TLS: a CA, server and client certificates.

    python -m edge_router.pki ca --out certs                                # certs/ca.pem, ca.key
    python -m edge_router.pki issue cloud --ca certs --ip 10.0.0.5 --dns cloud.example --out certs
    python -m edge_router.pki issue camera-12 --ca certs --client --out certs
    python -m edge_router.pki issue cloud --ca certs --ip 10.0.0.5 --days 90 --out certs   # renewal

`issue NAME` writes `NAME.pem` (the certificate, then the CA's: the chain a server presents) and
`NAME.key` (PKCS#8, which TorchServe's Netty and uvicorn both read; mode 0600). A renewal is the
same command again: the key is new, the servers pick the files up at their next start. The harness
(`benchmarks.lib.live`, `make demo` with TLS) makes a throwaway CA this way for each run. RSA-2048
keys: TorchServe's frontend reads only RSA private keys (its `private_key_file` goes through Java's
RSA key factory; an EC key stops it at start).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.cli import run_cli
from core.errors import UserInputError


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(out: str | Path, *, name: str = "edge-early-exit CA", days: int = 3650) -> Issued:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    (out / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", key)
    return Issued(out / "ca.pem", out / "ca.key")


def issue(
    ca: str | Path,
    name: str,
    out: str | Path,
    *,
    ips: list[str] = (),
    dns: list[str] = (),
    client: bool = False,
    days: float = 397,
    valid_from: dt.datetime | None = None,
) -> Issued:
    """A certificate for `name` signed by the CA in folder `ca`; a server certificate (for `ips`
    and `dns`, loopback when neither is given) unless `client`. `valid_from` (default now) and
    `days` make expired or not-yet-valid certificates for tests."""
    ca = Path(ca)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"no CA in {ca} ({type(exc).__name__}): python -m edge_router.pki ca --out {ca}"
        ) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    start = valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    )
    if not client:
        try:
            alt = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (ips or ([] if dns else ["127.0.0.1"]))]
        except ValueError as exc:
            raise UserInputError(f"--ip: {exc}") from None
        alt += [x509.DNSName(d) for d in dns] or ([x509.DNSName("localhost")] if not ips else [])
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    (out / f"{name}.pem").write_bytes(chain)
    _write_key(out / f"{name}.key", key)
    return Issued(out / f"{name}.pem", out / f"{name}.key")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_router.pki",
        description="Make a CA, and server or client certificates signed by it (PEM; keys PKCS#8, 0600).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=("ca", "issue"))
    p.add_argument("name", nargs="?", help="issue: the certificate's name (files NAME.pem, NAME.key)")
    p.add_argument("--out", default="certs", help="folder to write into")
    p.add_argument("--ca", default=None, help="issue: the CA's folder (ca.pem, ca.key); default --out")
    p.add_argument("--ip", action="append", default=[], help="issue: an IP address the server is reached at")
    p.add_argument("--dns", action="append", default=[], help="issue: a host name the server is reached at")
    p.add_argument("--client", action="store_true", help="issue: a client certificate (mutual TLS)")
    p.add_argument("--days", type=float, default=None, help="validity (default: CA 3650, others 397)")
    return p


def main(args: argparse.Namespace) -> int:
    if args.days is not None and args.days <= 0:
        raise UserInputError("--days must be positive")
    if args.action == "ca":
        made = make_ca(args.out, days=int(args.days or 3650))
    else:
        if not args.name or "/" in args.name or args.name.startswith("."):
            raise UserInputError("issue needs a plain NAME (the files NAME.pem and NAME.key)")
        made = issue(
            args.ca or args.out,
            args.name,
            args.out,
            ips=args.ip,
            dns=args.dns,
            client=args.client,
            days=args.days or 397,
        )
    print(f"wrote {made.cert} and {made.key}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
