"""Device keys: which devices may use the router, checked on every request when they are on.

    python -m edge_router.devices add camera-12 --keys run/devices.json     # prints the key, once
    python -m edge_router.devices list --keys run/devices.json
    python -m edge_router.devices rotate camera-12 --keys run/devices.json  # a new key; the old one stops
    python -m edge_router.devices revoke camera-12 --keys run/devices.json
    python -m edge_router --device-keys run/devices.json ...

A device sends `Authorization: Bearer <key>`; a key is `<key id>.<secret>` (the secret 256 random
bits). The file, which the operator manages with the commands above, holds for each key id the
SHA-256 of its secret, never the secret: a copy of the file lets nobody in. A request's secret is
hashed and compared with `hmac.compare_digest` (constant time). The router re-reads the file when it
changes (checked at most once a second), so adding, rotating and revoking take effect without a
restart. Without a valid key a request gets 401 with a one-line reason and `WWW-Authenticate`;
`/healthz` stays open for load balancers and probes. Logs and metrics name the key id, never the key.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from core.cli import run_cli
from core.errors import UserInputError

log = logging.getLogger(__name__)
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPEN_PATHS = frozenset({"/healthz"})
STAT_EVERY_S = 1.0


class DeviceAuthError(Exception):
    """Why a request is refused (401); the reason is safe to return and log (no key material)."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def read_file(path: Path) -> dict:
    """The keys file as {"keys": {key_id: {"sha256", "created", "revoked"}}}; UserInputError if bad."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"keys": {}}
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path} is not a device keys file ({type(exc).__name__})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict) or not all(
        KEY_ID.match(str(k))
        and isinstance(v, dict)
        and re.fullmatch(r"[0-9a-f]{64}", str(v.get("sha256", "")))
        for k, v in keys.items()
    ):
        raise UserInputError(f"{path} is not a device keys file (each key id needs a sha256)")
    return data


def write_file(path: Path, data: dict) -> None:
    """Atomically, readable by the owner only (the hashes are not secrets, but nobody else's business)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class DeviceKeys:
    """The keys file as the router reads it: reloaded when it changes, checked in constant time."""

    def __init__(self, path: str | Path, *, clock=time.monotonic):
        self.path, self._clock = Path(path), clock
        if not self.path.is_file():
            raise UserInputError(f"{self.path}: no device keys file (python -m edge_router.devices add ...)")
        self._lock = threading.Lock()
        self._hashes = self._load()
        self._mtime = self._stat()
        self._checked = self._clock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def _load(self) -> dict[str, str]:
        keys = read_file(self.path)["keys"]
        return {k: v["sha256"] for k, v in keys.items() if not v.get("revoked")}

    def reload(self) -> None:
        """Re-read the file if it changed; a missing or torn file keeps the keys we have."""
        with self._lock:
            now = self._clock()
            if now - self._checked < STAT_EVERY_S:
                return
            self._checked = now
            stat = self._stat()
            if stat is None or stat == self._mtime:
                return
            try:
                self._hashes = self._load()
                self._mtime = stat
                log.info("device keys reloaded: %d active", len(self._hashes))
            except UserInputError as exc:
                log.warning("device keys not reloaded: %s", exc)

    def check(self, authorization: str | None) -> str:
        """The key id of a valid `Authorization: Bearer <key id>.<secret>`; DeviceAuthError if not."""
        self.reload()
        if not authorization:
            raise DeviceAuthError("a device key is required (Authorization: Bearer <key>)")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise DeviceAuthError("the Authorization header must be 'Bearer <key>'")
        key_id, dot, secret = key.strip().partition(".")
        expected = self._hashes.get(key_id) if dot and KEY_ID.match(key_id) else None
        # hash and compare even for an unknown id, so the time does not tell which ids exist
        ok = hmac.compare_digest(digest(secret), expected or digest("unknown" + secret))
        if expected is None or not ok:
            raise DeviceAuthError("unknown, revoked or wrong device key")
        return key_id


class DeviceAuth:
    """ASGI middleware: every HTTP request but `OPEN_PATHS` needs a valid device key.

    `on_request(key_id or None, reason or None)` is called once per checked request (metrics)."""

    def __init__(self, app, keys: DeviceKeys, on_request=None):
        self.app, self.keys = app, keys
        self.on_request = on_request or (lambda key_id, reason: None)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            key_id = self.keys.check(header)
        except DeviceAuthError as exc:
            self.on_request(None, "missing" if header is None else "invalid")
            body = json.dumps({"error": str(exc)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="edge_router"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.on_request(key_id, None)
        scope.setdefault("state", {})["device"] = key_id
        await self.app(scope, receive, send)


# -- the operator's commands ------------------------------------------------------------------------
def new_key(key_id: str) -> tuple[str, dict]:
    secret = secrets.token_urlsafe(32)
    entry = {"sha256": digest(secret), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return f"{key_id}.{secret}", entry


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_router.devices",
        description="Manage the router's device keys (the file `python -m edge_router --device-keys` reads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=("add", "rotate", "revoke", "list"))
    p.add_argument("key_id", nargs="?", help="the device's key id: letters, digits, _ and -, up to 64")
    p.add_argument("--keys", default="run/devices.json", help="the device keys file")
    return p


def main(args: argparse.Namespace) -> int:
    path = Path(args.keys)
    data = read_file(path)
    keys = data.setdefault("keys", {})
    if args.action == "list":
        for key_id, entry in sorted(keys.items()):
            state = "revoked" if entry.get("revoked") else "active"
            print(f"{key_id}\t{state}\tcreated {entry.get('created', '?')}")
        return 0
    if not args.key_id or not KEY_ID.match(args.key_id):
        raise UserInputError("a key id is needed: letters, digits, _ and -, up to 64 characters")
    if args.action == "add" and args.key_id in keys and not keys[args.key_id].get("revoked"):
        raise UserInputError(f"{args.key_id} exists (rotate it, or revoke it first)")
    if args.action in ("rotate", "revoke") and args.key_id not in keys:
        raise UserInputError(f"no key {args.key_id} in {path}")
    if args.action == "revoke":
        keys[args.key_id]["revoked"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_file(path, data)
        print(f"{args.key_id}: revoked (the router refuses it within a second)")
        return 0
    key, keys[args.key_id] = new_key(args.key_id)
    write_file(path, data)
    print(key)  # the only time the key is shown: give it to the device
    print(
        f"{args.key_id}: {'added' if args.action == 'add' else 'rotated'}; the key is shown once",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
