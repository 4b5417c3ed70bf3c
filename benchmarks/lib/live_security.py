"""The live system with its security on: a throwaway CA made at start, TLS on every hop that would
leave the box, and device keys at the router (`LiveSystem(security="tls" | "mtls")`).

What `make` writes into `<run_dir>/security/` (`edge_router.pki`, `edge_router.devices`):

- `ca.pem`, `ca.key`: the run's CA, which signs everything below and which every client trusts;
- `cloud.pem`/`.key`: the cloud's server certificate (TorchServe's `certificate_file`, KServe's
  `--tls-cert`) for the cloud's address; `router.pem`/`.key`: the router's, for its address;
- `device.pem`/`.key`: a device's client certificate (mutual TLS, `security="mtls"`);
- `devices.json` with one key, `device-1`, whose key (`device_key`) the load clients send; the key
  itself in `device-1.token` (mode 0600), so a client in another process can be the device
  (`device_options(folder)`: what `benchmarks.stream --security-dir` and `make demo` use).

The flags each part gets follow; clients get `client_options()` (CA bundle, key header, and the
client certificate under mutual TLS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import UserInputError

MODES = ("off", "tls", "mtls")
DEVICE = "device-1"


@dataclass(frozen=True)
class Secured:
    folder: Path
    device_key: str
    mtls: bool

    def file(self, name: str) -> str:
        return str(self.folder / name)

    @property
    def ca(self) -> str:
        return self.file("ca.pem")

    def torchserve_flags(self) -> list[str]:
        return [
            "--tls-cert",
            self.file("cloud.pem"),
            "--tls-key",
            self.file("cloud.key"),
            "--tls-ca",
            self.ca,
        ]

    def kserve_flags(self) -> list[str]:
        return ["--tls-cert", self.file("cloud.pem"), "--tls-key", self.file("cloud.key")]

    def router_flags(self) -> list[str]:
        flags = [
            "--cloud-ca",
            self.ca,
            "--tls-cert",
            self.file("router.pem"),
            "--tls-key",
            self.file("router.key"),
            "--device-keys",
            self.file("devices.json"),
        ]
        return flags + (["--tls-client-ca", self.ca] if self.mtls else [])

    def client_options(self) -> dict:
        """`requests` options of a device: trust the CA, send the key, and under mutual TLS present
        the device certificate."""
        out: dict = {"verify": self.ca, "headers": {"Authorization": f"Bearer {self.device_key}"}}
        if self.mtls:
            out["cert"] = (self.file("device.pem"), self.file("device.key"))
        return out


def make(folder: Path, *, cloud_host: str, router_host: str, mtls: bool = False) -> Secured:
    """A fresh CA, the cloud's and the router's certificates, a device certificate and one device key."""
    from edge_router import devices, pki

    folder = Path(folder)
    pki.make_ca(folder)
    pki.issue(folder, "cloud", folder, ips=[cloud_host])
    pki.issue(folder, "router", folder, ips=[router_host])
    pki.issue(folder, "device", folder, client=True)
    key, entry = devices.new_key(DEVICE)
    devices.write_file(folder / "devices.json", {"keys": {DEVICE: entry}})
    token = folder / f"{DEVICE}.token"
    token.touch(mode=0o600)
    token.write_text(key)
    (folder / "mtls").unlink(missing_ok=True)
    if mtls:
        (folder / "mtls").touch()
    return Secured(folder, key, mtls)


def device_options(folder: str | Path) -> dict:
    """A device's `requests` options from a folder `make` wrote (CA, key, certificate under mTLS)."""
    folder = Path(folder)
    token = folder / f"{DEVICE}.token"
    if not token.is_file():
        raise UserInputError(f"{folder} holds no device key (made by LiveSystem(security=...))")
    return Secured(folder, token.read_text().strip(), (folder / "mtls").is_file()).client_options()
