"""The cloud tier as the router sees it: any number of endpoints, TorchServe or Open Inference Protocol.

`CloudPool` decides, without HTTP, which endpoint gets the next offload: among the healthy
endpoints that serve the expert (discovery says which), the one with the fewest offloads in
flight, round robin among equals (least outstanding requests: a slow replica gets less, a dead one
none); `--cloud-policy round_robin` takes them strictly in turn (`benchmarks.scaleout` compares).
An endpoint that refuses connections or answers 5xx is taken out at once; it comes back when
discovery lists it again (a successful listing is the health check), or after `down_s` on trial.
`CloudUpstream` sends the offload (TorchServe: `POST /predictions/<model>`; OIP, KServe or
Triton: `POST /v2/models/<model>/infer`, the same binary-framed tensor either way) and, when an
endpoint fails and the deadline leaves time, retries on the next one before the router answers
degraded. An OIP answer (`outputs` `class` and `confidence`) is turned into the TorchServe
handler's `predictions` so `edge_router.decisions` sees one shape.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from core import experts
from edge_router.adaptive import LinkEstimates
from edge_router.decisions import Reply, UpstreamTimeout, UpstreamUnreachable
from edge_router.discovery import Catalogue, Endpoint
from edge_router.tls import reason as tls_reason
from edge_router.tokens import with_fresh_token

log = logging.getLogger(__name__)


@dataclass
class _State:
    outstanding: int = 0
    down_since: float | None = None  # wall-clock time it was taken out, None while in
    answered: int = 0  # offloads it answered (not 5xx), since the router started
    failed: int = 0  # offloads it refused, dropped or answered with 5xx (a timeout is neither)


POLICIES = ("least_outstanding", "round_robin")
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0


class CloudPool:
    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        policy: str = "least_outstanding",
        down_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ):
        if policy not in POLICIES:
            raise ValueError(f"cloud policy {policy!r}: one of {', '.join(POLICIES)}")
        self.policy = policy
        self.endpoints = {e.name: e for e in endpoints}
        self.state = {e.name: _State() for e in endpoints}
        self.down_s, self.clock = down_s, clock
        self._turn = itertools.count()
        self.links = LinkEstimates(list(self.endpoints))  # offload times, for edge_router.adaptive

    def healthy(self, name: str, listed_at: float | None = None) -> bool:
        st = self.state[name]
        if st.down_since is None:
            return True
        listed_since = listed_at is not None and listed_at > st.down_since
        if listed_since or self.clock() - st.down_since > self.down_s:
            st.down_since = None  # listed again since it failed (or on trial): back in
            log.info("cloud endpoint %s back in", name)
            return True
        return False

    def order(
        self, names: tuple[str, ...] | list[str], listed_at: dict[str, float] | None = None
    ) -> list[Endpoint]:
        """The endpoints to try, best first: the healthy ones in turn, by fewest in flight first
        unless the policy is plain round robin."""
        listed_at = listed_at or {}
        known = [n for n in names if n in self.endpoints]
        if not known:
            return []
        turn = next(self._turn) % len(known)
        rotated = known[turn:] + known[:turn]
        up = [n for n in rotated if self.healthy(n, listed_at.get(n))]
        if self.policy == "least_outstanding":
            up.sort(key=lambda n: self.state[n].outstanding)  # stable: the rotation breaks ties
        return [self.endpoints[n] for n in up]

    def begin(self, name: str) -> None:
        self.state[name].outstanding += 1

    def end(self, name: str, *, failed: bool, answered: bool = False) -> None:
        st = self.state[name]
        st.outstanding -= 1
        st.failed += failed
        st.answered += answered
        if failed and st.down_since is None:
            st.down_since = self.clock()
            log.warning("cloud endpoint %s taken out", name)

    def describe(self) -> dict:
        links = self.links.describe()
        return {
            n: {
                "kind": self.endpoints[n].kind,
                "url": self.endpoints[n].inference_url,
                "outstanding": s.outstanding,
                "up": s.down_since is None,
                "answered": s.answered,
                "failed": s.failed,
                **links[n],
            }
            for n, s in self.state.items()
        }


def oip_predictions(content: bytes) -> bytes:
    """An OIP inference answer as the TorchServe cloud handler's JSON (`predictions`, `run_id`)."""
    answer = json.loads(content)
    outputs = {o["name"]: o.get("data") for o in answer["outputs"]}
    classes, confidences = outputs["class"], outputs["confidence"]
    if len(classes) != len(confidences):
        raise ValueError("class and confidence differ in length")
    params = answer.get("parameters") or {}
    final = {k: params[k] for k in ("exit", "exit_name") if k in params}
    return json.dumps(
        {
            "predictions": [
                {"class": int(c), "confidence": float(p), **final}
                for c, p in zip(classes, confidences, strict=True)
            ],
            "run_id": params.get("run_id"),
        }
    ).encode()


class CloudUpstream:
    """Offloads over the pool, with one retry per remaining endpoint while the deadline allows."""

    def __init__(
        self,
        pool: CloudPool,
        catalogue: Callable[[], Catalogue],
        connect_timeout_s: float,
        on_retry: Callable[[str], None] | None = None,
    ):
        self.pool, self.catalogue, self.connect_timeout_s = pool, catalogue, connect_timeout_s
        self.on_retry = on_retry or (lambda name: None)

    def candidates(self, model: str) -> list[Endpoint]:
        cat = self.catalogue()
        role, expert = experts.parse_archive_name(model) or ("", "")
        if role == "cloud":
            pair = cat.experts.get(expert)
            names = pair.clouds if pair else ()
        else:  # full_<expert> (cloud_only): the TorchServe endpoints hold those archives
            names = [n for n, e in self.pool.endpoints.items() if e.kind == "torchserve"]
        return self.pool.order(names, cat.listed_at)

    def expected_offload_s(self, model: str) -> float | None:
        """The expected time of an offload of `model` now: the slowest estimate among the healthy
        endpoints that serve it, since the pool may pick any of them (None while any of them has
        none: it is worth learning)."""
        role, expert = experts.parse_archive_name(model) or ("", "")
        cat = self.catalogue()
        pair = cat.experts.get(expert) if role == "cloud" else None
        names = [n for n in (pair.clouds if pair else ()) if n in self.pool.endpoints]
        estimates = [
            self.pool.links.expected_s(n) for n in names if self.pool.healthy(n, cat.listed_at.get(n))
        ]
        if not estimates or any(e is None for e in estimates):
            return None
        return max(estimates)

    async def probe_loop(self, session: aiohttp.ClientSession, every_s: float = PROBE_EVERY_S) -> None:
        """Probe every endpoint no offload or probe has timed for `every_s`: its round trip on a
        light request (TorchServe `/ping`, OIP `/v2/health/live`), so the estimate follows a link
        that changes while the router, seeing it slow, offloads nothing."""
        while True:
            await asyncio.sleep(every_s / 2)
            try:
                idle = [ep for n, ep in self.pool.endpoints.items() if self.pool.links.idle(n, every_s)]
                await asyncio.gather(*(self._probe(session, ep) for ep in idle))
            except Exception:  # noqa: BLE001 - the estimates must outlive any single failure
                log.exception("cloud probe failed")

    async def _probe(self, session: aiohttp.ClientSession, ep: Endpoint) -> None:
        if ep.refusal():
            return  # nothing is sent to an endpoint that would get it in the clear
        url = f"{ep.inference_url}/v2/health/live" if ep.kind == "oip" else f"{ep.inference_url}/ping"
        started = time.perf_counter()
        try:
            async with session.get(
                url,
                headers=ep.auth("inference"),
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S),
                ssl=ep.ssl(),
            ) as r:
                await r.read()  # any answer is a round trip (a refused token too)
                self.pool.links.observe_probe(ep.name, time.perf_counter() - started)
        except (TimeoutError, aiohttp.ClientError):
            self.pool.links.observe_probe(ep.name, PROBE_TIMEOUT_S)  # at least this slow

    async def post(
        self,
        session: aiohttp.ClientSession,
        model: str,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float,
    ) -> Reply:
        deadline = time.perf_counter() + timeout_s
        endpoints = self.candidates(model)
        if not endpoints:
            errors = self.catalogue().errors
            why = "; ".join(errors[n] for n in self.pool.endpoints if n in errors)
            raise UpstreamUnreachable(
                f"no healthy cloud endpoint serves {model}" + (f" ({why})" if why else "")
            )
        last: Exception | Reply = UpstreamUnreachable("no attempt")
        for i, ep in enumerate(endpoints):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise UpstreamTimeout()
            if i:
                self.on_retry(ep.name)
            self.pool.begin(ep.name)
            failed, answered, started = True, False, time.perf_counter()
            try:
                reply = await self._send(session, ep, model, body, headers, remaining)
                failed = reply.status >= 500
                answered = not failed
                if answered:
                    self.pool.links.observe_offload(ep.name, time.perf_counter() - started)
                    return reply
                last = reply
            except UpstreamUnreachable as exc:
                last = exc
            except UpstreamTimeout:
                failed = False  # slow, not dead: the deadline is spent either way
                self.pool.links.observe_offload(ep.name, time.perf_counter() - started, censored=True)
                raise
            finally:
                self.pool.end(ep.name, failed=failed, answered=answered)
        if isinstance(last, Reply):
            return last
        raise last

    async def _send(
        self,
        session: aiohttp.ClientSession,
        ep: Endpoint,
        model: str,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float,
    ) -> Reply:
        url = (
            f"{ep.inference_url}/v2/models/{model}/infer"
            if ep.kind == "oip"
            else f"{ep.inference_url}/predictions/{model}"
        )
        if why := ep.refusal():
            raise UpstreamUnreachable(why)
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(self.connect_timeout_s, timeout_s))

        async def send(auth: dict[str, str]) -> Reply:
            async with session.post(
                url, data=body, headers={**auth, **headers}, timeout=timeout, ssl=ep.ssl()
            ) as r:
                return Reply(r.status, r.headers, await r.read())

        try:
            reply = await with_fresh_token(ep, send)
        except TimeoutError:
            raise UpstreamTimeout() from None
        except (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError) as exc:
            raise UpstreamUnreachable(f"{ep.name}: {tls_reason(exc)}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(str(exc)) from None
        if ep.kind == "oip" and reply.status == 200:
            try:
                return Reply(200, {"Content-Type": "application/json"}, oip_predictions(reply.content))
            except (ValueError, KeyError, TypeError):
                return Reply(502, {}, json.dumps({"error": f"{ep.name}: malformed OIP answer"}).encode())
        return reply
