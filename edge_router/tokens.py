"""A TorchServe instance's tokens, kept valid for as long as the router runs.

TorchServe's token authorization (on in every instance we start) writes `key_file.json` with three
keys: `inference` and `management`, each with an expiration time (`token_expiration_min`, 60 minutes
by default, counted from when the key was made), and `API`, which never expires and may ask the
management API for a fresh inference or management key (`GET /token?type=...`); TorchServe then
writes the new key into the same file. A restarted instance writes a new file with new keys.

A router that read the keys once at start-up would lose its edge after an hour, or after any restart
of an instance. `KeyFile` re-reads the file whenever it changes (checked at most once a second, so a
request costs a cached lookup), and `renew_due` (called by discovery on every refresh) asks for a new
key before the current one expires. Tokens are never logged or returned.

TorchServe swaps a renewed key in at once: a request already on its way with the old one is refused
(400, "Token Authorization failed"), two in an hour-long soak at 11,000 requests a minute.
`with_fresh_token` sends such a request once more when the key file shows a new key, waiting up to
`RENEWAL_WAIT_S` for TorchServe to write it (the swap comes a moment before the file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import requests

from core.errors import UserInputError

log = logging.getLogger(__name__)
KINDS = ("inference", "management")
RENEW_BEFORE_S = 600.0  # ask for a new key when the current one has less than this left
RENEW_AT_MOST_EVERY_S = 30.0  # per kind, so a short token_expiration_min cannot make a request loop
STAT_EVERY_S = 1.0
ReplyT = TypeVar("ReplyT")
RENEWAL_WAIT_S = 0.25  # after a refused token: how long the new key may take to reach the file
TOKEN_REFUSED = b"Token Authorization failed"  # TorchServe's message, with status 400


def _expiry(text: object) -> float | None:
    """Epoch seconds of a Java `Instant` string ("2026-11-30T14:03:05.123456789Z"), None if absent."""
    if not isinstance(text, str):
        return None
    # Python parses at most six fractional digits; Java may print nine
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_key_file(path: Path) -> dict[str, tuple[str, float | None]]:
    """kind -> (key, expiry) for inference, management and API; UserInputError if unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        out = {kind: (str(data[kind]["key"]), _expiry(data[kind].get("expiration time"))) for kind in KINDS}
        if isinstance(data.get("API"), dict) and "key" in data["API"]:
            out["API"] = (str(data["API"]["key"]), None)
        return out
    except FileNotFoundError:
        raise UserInputError(f"{path} not found: is the instance started (token auth on)?") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(f"{path} is not a TorchServe key file") from None


class KeyFile:
    """The current tokens of one instance, from its key file, renewed before they expire."""

    def __init__(self, path: str | Path, management_url: str = "", *, clock=time.time):
        self.path, self.management_url, self._clock = Path(path), management_url.rstrip("/"), clock
        self._lock = threading.Lock()
        self._keys = parse_key_file(self.path)
        self._mtime = self._stat()
        self._checked = self._clock()
        self._asked: dict[str, float] = {}

    def _stat(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def reload(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (a restart or a renewal); a missing or torn file keeps the
        keys we have (TorchServe deletes the file on shutdown and may be writing it right now)."""
        with self._lock:
            now = self._clock()
            if not force and now - self._checked < STAT_EVERY_S:
                return
            self._checked = now
            mtime = self._stat()
            if mtime is None or (mtime == self._mtime and not force):
                return
            try:
                self._keys = parse_key_file(self.path)
                self._mtime = mtime
            except UserInputError:
                pass

    def token(self, kind: str) -> str:
        self.reload()
        return self._keys[kind][0]

    def expires_in(self, kind: str) -> float | None:
        expiry = self._keys[kind][1]
        return None if expiry is None else expiry - self._clock()

    def renew_due(self, session: requests.Session, *, timeout: float = 5.0) -> list[str]:
        """Ask for a new key of every kind that expires within RENEW_BEFORE_S; the kinds renewed."""
        renewed = []
        self.reload()
        if "API" not in self._keys or not self.management_url:
            return renewed
        for kind in KINDS:
            left = self.expires_in(kind)
            now = self._clock()
            if (
                left is None
                or left > RENEW_BEFORE_S
                or now - self._asked.get(kind, -1e18) < RENEW_AT_MOST_EVERY_S
            ):
                continue
            self._asked[kind] = now
            try:
                r = session.get(
                    f"{self.management_url}/token",
                    params={"type": kind},
                    headers={"Authorization": f"Bearer {self._keys['API'][0]}"},
                    timeout=timeout,
                )
                r.raise_for_status()
            except requests.RequestException as exc:
                log.warning("could not renew the %s key of %s: %s", kind, self.path, type(exc).__name__)
                continue
            self.reload(force=True)
            renewed.append(kind)
            log.info("renewed the %s key of %s (%.0f s were left)", kind, self.path, left)
        return renewed


def token_refused(status: int, content: bytes) -> bool:
    """TorchServe's answer to a request whose token it does not (or no longer) accept."""
    return status == 400 and TOKEN_REFUSED in content[:1024]


async def with_fresh_token(
    endpoint, send: Callable[[dict[str, str]], Awaitable[ReplyT]], kind: str = "inference"
) -> ReplyT:
    """`await send(auth_headers)` with `endpoint`'s current key; if TorchServe refuses that key and
    the key file shows a new one (now or within RENEWAL_WAIT_S), once more with the new key.

    `endpoint` has `keys` (a KeyFile or None) and `auth(kind)`; `send` returns a reply with
    `status` and `content`."""
    used = endpoint.auth(kind)
    reply = await send(used)
    if endpoint.keys is None or not token_refused(reply.status, reply.content):
        return reply
    deadline = time.monotonic() + RENEWAL_WAIT_S
    while True:
        endpoint.keys.reload(force=True)
        fresh = endpoint.auth(kind)
        if fresh != used:
            return await send(fresh)
        if time.monotonic() >= deadline:
            return reply  # the key is still the refused one: a wrong key, not a renewal
        await asyncio.sleep(0.02)
