"""TLS on the hops that leave the box: the router's front door (server side, optionally mutual) and
the offload hop to the cloud (client side, the cloud's certificate verified against a CA bundle).

- `ServerTls`: a certificate and key to serve HTTPS with, and optionally a client CA: then every
  client must present a certificate it signed (mutual TLS). The router's `--tls-cert`, `--tls-key`,
  `--tls-client-ca`; KServe's predictor takes the same flags (`python -m cloud_kserve`); TorchServe
  its own `certificate_file` and `private_key_file` (`python -m edge_router.torchserve start
  --tls-cert ...`).
- `ClientTls`: the CA bundle that signs the cloud's certificates, and optionally a client
  certificate for a cloud that asks for one. With it the router requires TLS of that endpoint: an
  `http://` URL is refused before anything is sent (the token and the tensor never cross in the
  clear), and a certificate that does not verify (wrong CA, expired, wrong host) fails the
  connection; the router then answers from the edge, `degraded`, with the reason. Never a silent
  downgrade. One `ssl.SSLContext` per endpoint, shared by every connection of the router's pooled
  keep-alive session, so a handshake is paid once per connection, not per offload.
"""

from __future__ import annotations

import asyncio.sslproto
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import requests

from core.errors import UserInputError


def _readable(path: str | Path | None, what: str) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserInputError(f"{what} {path} is not a file")
    return str(path)


# -- memory per TLS connection on the front door ---------------------------------------------------------
# The SSL layer of asyncio (and uvloop's copy of it) gives every connection a 256-KiB buffer to read
# the socket into and lets the decrypted-but-unread bytes grow to 256 KiB before it stops reading:
# 1,000 devices that stall mid-upload held about 220 KB each over the 64 KB of body the router kept
# (docs/results/reliability_tls). A TLS record carries at most 16 KiB of plaintext, so reading one
# record at a time costs a few more read calls on a large image and nothing else.
TLS_READ_CHUNK_BYTES = 16 * 1024
TLS_READ_HIGH_WATER_BYTES = 64 * 1024


def bound_tls_read_buffers() -> None:
    """Make asyncio's SSL connections read one record at a time. Process-wide: the router calls it
    when it serves HTTPS, and then runs on asyncio's loop, whose SSL buffer size can be set (uvloop's
    is compiled in)."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_CHUNK_BYTES


def bound_tls_incoming(transport) -> None:
    """Stop reading a TLS connection's socket once 64 KiB wait decrypted-but-unread (plain TCP
    transports have no such buffer and are left alone)."""
    set_limits = getattr(transport, "set_read_buffer_limits", None)
    if set_limits is not None:
        set_limits(high=TLS_READ_HIGH_WATER_BYTES)


@dataclass(frozen=True)
class ServerTls:
    cert_file: str
    key_file: str
    client_ca: str | None = None  # mutual TLS: clients need a certificate this CA signed

    @classmethod
    def from_flags(cls, cert: str | None, key: str | None, client_ca: str | None = None) -> ServerTls | None:
        """None when neither certificate nor key is given; a one-line error for half a pair."""
        if cert is None and key is None:
            if client_ca is not None:
                raise UserInputError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
            return None
        if cert is None or key is None:
            raise UserInputError("--tls-cert and --tls-key go together")
        return cls(
            _readable(cert, "--tls-cert"),
            _readable(key, "--tls-key"),
            _readable(client_ca, "--tls-client-ca"),
        )

    def uvicorn_options(self) -> dict:
        return {
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_ca_certs": self.client_ca,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.client_ca else ssl.CERT_NONE,
        }


@dataclass(frozen=True)
class ClientTls:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    _context: list = field(default_factory=list, compare=False, repr=False)  # built once, lazily

    @classmethod
    def from_flags(cls, ca: str | None, cert: str | None = None, key: str | None = None) -> ClientTls | None:
        if ca is None:
            if cert or key:
                raise UserInputError("a client certificate needs --cloud-ca (TLS to the cloud)")
            return None
        if (cert is None) != (key is None):
            raise UserInputError("--cloud-client-cert and --cloud-client-key go together")
        return cls(
            _readable(ca, "the cloud CA bundle"),
            _readable(cert, "--cloud-client-cert"),
            _readable(key, "--cloud-client-key"),
        )

    def context(self) -> ssl.SSLContext:
        """Verification on (certificate chain to `ca_file`, host name), TLS 1.2 at least."""
        if not self._context:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            self._context.append(ctx)
        return self._context[0]

    def requests_options(self) -> dict:
        """The same trust for `requests` (discovery, token renewal)."""
        out: dict = {"verify": self.ca_file}
        if self.cert_file:
            out["cert"] = (self.cert_file, self.key_file)
        return out

    def session(self) -> requests.Session:
        """A `requests` session with this trust (`verified_session`)."""
        return verified_session(**self.requests_options())


def verified_session(
    verify: str | bool = True, cert: tuple[str, str] | None = None, headers: dict | None = None
) -> requests.Session:
    """A `requests` session that verifies servers against `verify` (a CA bundle, or True for the
    system's), presents `cert` if given, and sends `headers` with every request.

    With a CA bundle or a certificate of its own, the session does not read the environment:
    requests lets `REQUESTS_CA_BUNDLE` override a session's own bundle (psf/requests#3829), and
    the CA the caller chose must win."""
    session = requests.Session()
    if headers:
        session.headers.update(headers)
    if verify is not True or cert:
        session.trust_env = False
        session.verify, session.cert = verify, cert
    return session


def plain_http_refused(url: str, tls: ClientTls | None) -> str | None:
    """Why `url` may not be used when TLS is required of it (None: it may)."""
    if tls is not None and not url.startswith("https://"):
        host = url.split("/")[2] if "//" in url else url
        return f"TLS required (a CA bundle is given) but {host} is plain HTTP"
    return None


def reason(exc: BaseException) -> str:
    """A TLS failure in one line: what the certificate check said, without the library's framing."""
    text = " ".join(str(exc).split())
    m = re.search(
        r"(certificate verify failed[^'()\]]*|wrong version number|tlsv1 alert [a-z ]+|"
        r"sslv3 alert [a-z ]+|hostname '[^']*' doesn't match[^'()\]]*|record layer failure)",
        text,
    )
    return f"TLS: {m.group(1).strip()}" if m else text[:200]
