"""What the router decides for one request, with no HTTP in it.

The front door (`edge_router.app`) parses HTTP and hands this module a body and `Options`; the
TorchServe instances are reached through an `Upstream` (the app's pooled async HTTP client, or a
fake one in the unit tests). The decisions, in order:

1. **Expert**: the one the request names (`expert=`), else the expert of the distortion the
   classifier (run in process, `classify_distortion`) finds most likely. With that expert not
   registered, the classifier manifest's fallback table names the next type to try (data, written
   at export from `core.distortions`); the answer's `fallback` says whose expert answered instead.
2. **Edge**: the expert's edge segments on the edge TorchServe, with the request's exit threshold.
   A side branch confident enough answers there.
3. **Offload**: otherwise the split tensor goes unchanged to the cloud expert, and the final-exit
   rule (`core.exits.decide`) picks the answer from every branch and the final exit. `edge_only`
   never offloads: the most confident side branch answers.
4. **Degraded answers**: a cloud that is unreachable, answers 5xx or would miss the deadline does not
   fail the request: the most confident edge branch answers, marked `degraded` with the reason.
5. **Deadlines**: every upstream call gets what is left of the request's deadline; a step that would
   start after it is refused with 504 (on the edge) or degrades (on the cloud).
6. **cloud_only**: the image goes to the cloud's `full_<expert>` archive (the no-edge baseline);
   a missing archive is the request's fault (404), not the system's.

Every refusal is a `RouterError` with the HTTP status the front door answers and a one-line reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from core import experts, wire
from core.exits import decide
from edge_router import adaptive
from edge_router.discovery import Catalogue, ExpertPair
from edge_router.options import (
    Defaults,
    Options,
    RouterError,
    check_image,
)
from edge_router.tokens import token_refused


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self, step: str) -> dict:
        try:
            data = json.loads(self.content)
        except ValueError:
            raise RouterError(502, f"{step} returned no JSON") from None
        if not isinstance(data, dict):
            raise RouterError(502, f"{step} returned unexpected JSON")
        return data

    def reason(self) -> str:
        try:
            data = json.loads(self.content)
            msg = data.get("error") or data.get("message") or f"status {self.status}"
        except (ValueError, AttributeError):
            msg = f"status {self.status}"
        return " ".join(str(msg).split())[:200]


class UpstreamTimeout(Exception):
    """No answer within the time given."""


class UpstreamUnreachable(Exception):
    """No connection could be made, or it broke before an answer."""


class Upstream(Protocol):
    async def post(
        self, role: str, model: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        """POST `body` to `predictions/<model>` of the `role` ('edge' or 'cloud') instance."""
        ...


# The distortion classifier as the decisions see it: image bytes -> (distortion, probabilities).
ClassifyDistortion = Callable[[bytes], Awaitable[tuple[str, dict[str, float]]]]


@dataclass
class Decider:
    """Answers one request: `await decider.answer(body, options)` -> the JSON answer (a dict)."""

    catalogue: Callable[[], Catalogue]
    classify_distortion: ClassifyDistortion | None
    upstream: Upstream
    defaults: Defaults = field(default_factory=Defaults)

    async def answer(self, body: bytes, options: Options) -> dict:
        started = time.perf_counter()
        deadline = started + options.deadline_s
        check_image(body, self.defaults.max_body_bytes)
        if options.mode == "cloud_only":
            return await self._cloud_only(body, options, started, deadline)
        timings: dict[str, float] = {}
        pair, distortion, probabilities, fallback = await self._expert(body, options, timings)
        points = pair.edge.operating_points
        target = adaptive.target_plan(points, options.min_accuracy)
        if target is not None:  # the plan's threshold, for the edge and the final-exit rule alike
            options = replace(options, threshold=target.threshold)
        threshold = options.threshold

        t = time.perf_counter()
        reply = await self._call(
            "edge",
            experts.archive_name("edge", pair.name),
            body,
            {"X-Exit-Threshold": repr(threshold), "X-Offload-Compression": options.compression},
            deadline,
            "edge",
        )
        timings["edge_ms"] = _ms(t)
        out = {
            "expert": pair.name,
            "distortion": distortion,
            "distortion_probabilities": probabilities,
            **({"fallback": fallback} if fallback else {}),
            "threshold": threshold,
            "offloaded": False,
            "offloaded_bytes": 0,
            "degraded": False,
        }
        if options.min_accuracy is not None:
            out["target"] = (
                {"min_accuracy": options.min_accuracy, **target.__dict__}
                if target is not None
                else {"min_accuracy": options.min_accuracy, "note": "no operating points: fixed threshold"}
            )
        names = pair.edge.class_names
        head_len = reply.headers.get(wire.HEADER_LENGTH)
        if head_len is None:  # a side branch answered on the edge
            edge = reply.json("edge")
            try:
                out.update(
                    exit=edge["exit"],
                    exit_name=edge["exit_name"],
                    **{"class": edge["class"]},
                    class_name=edge["class_name"],
                    confidence=edge["confidence"],
                )
            except KeyError as exc:
                raise RouterError(502, f"edge answer lacks {exc}") from None
            # the exit and class index the manifest's names: an edge out of step must not pass on
            if not _index_in(out["exit"], len(pair.edge.exits)):
                raise RouterError(
                    502, f"edge answered exit {str(out['exit'])[:20]} of {len(pair.edge.exits)}"
                )
            if not _index_in(out["class"], len(names)):
                raise RouterError(502, f"edge answered class {str(out['class'])[:20]} of {len(names)}")
        else:
            try:
                message = wire.decode(reply.content, head_len)
            except wire.WireError as exc:
                raise RouterError(502, f"edge returned a malformed tensor: {exc}") from None
            conf, pred = _branches(message.parameters.get("branches"), len(pair.edge.exits), len(names))
            if options.mode == "edge_only":
                _best_branch(out, conf, pred, names, pair)
                out["exit_note"] = "edge_only: the most confident side branch"
            else:
                decision = adaptive.decide_offload(
                    policy=options.offload,
                    points=points,
                    threshold=threshold,
                    target=target,
                    expected_s=self._expected_offload_s(pair) if options.offload == "adaptive" else None,
                    time_left_s=deadline - time.perf_counter(),
                    min_gain_per_second=self.defaults.min_gain_per_second,
                )
                out["offload_decision"] = decision.describe()
                if decision.offload:
                    await self._offload(
                        out, reply, head_len, conf, pred, names, pair, options, deadline, timings
                    )
                else:
                    _best_branch(out, conf, pred, names, pair)
                    if decision.reason == "predicted_deadline":
                        out.update(degraded=True, degraded_reason="predicted_deadline")
                        out["degraded_kind"] = "predicted_deadline"
        timings["total_ms"] = _ms(started)
        out["timings_ms"] = {k: round(v, 3) for k, v in timings.items()}
        return out

    def _expected_offload_s(self, pair: ExpertPair) -> float | None:
        """The upstream's estimate of an offload's time for this expert (None: not known)."""
        estimate = getattr(self.upstream, "expected_offload_s", None)
        return estimate(experts.archive_name("cloud", pair.name)) if estimate is not None else None

    async def _expert(
        self, body: bytes, options: Options, timings: dict
    ) -> tuple[ExpertPair, str | None, dict | None, dict | None]:
        cat = self.catalogue()
        if options.expert is not None:
            pair = cat.experts.get(options.expert)
            if pair is None:
                raise RouterError(
                    404,
                    f"expert {options.expert!r} is not registered on both edge and "
                    f"cloud (known: {', '.join(sorted(cat.experts)) or 'none'})",
                )
            return pair, None, None, None
        if self.classify_distortion is None:
            raise RouterError(503, "no distortion classifier loaded on the router")
        t = time.perf_counter()
        distortion, probabilities = await self.classify_distortion(body)
        timings["classifier_ms"] = _ms(t)
        pair, passed_over = cat.route(distortion)
        if pair is None:
            raise RouterError(503, f"no expert registered for {' or '.join(passed_over)}")
        fallback = None
        if passed_over:  # said in the answer: another type's expert answered
            fallback = {"from": distortion, "reason": f"no expert registered for {' or '.join(passed_over)}"}
        return pair, distortion, probabilities, fallback

    async def _offload(
        self,
        out: dict,
        reply: Reply,
        head_len: str,
        conf: list,
        pred: list,
        names: list[str],
        pair: ExpertPair,
        options: Options,
        deadline: float,
        timings: dict,
    ) -> None:
        out["offloaded"] = True
        out["offloaded_bytes"] = len(reply.content) - int(head_len)
        out["compression"] = options.compression
        t = time.perf_counter()
        try:
            cloud = (
                await self._call(
                    "cloud",
                    experts.archive_name("cloud", pair.name),
                    reply.content,
                    {wire.HEADER_LENGTH: head_len, "Content-Type": wire.CONTENT_TYPE},
                    deadline,
                    "cloud",
                )
            ).json("cloud")
            try:
                final = cloud["predictions"][0]
                final_conf, final_class = _json_number(final["confidence"]), _json_int(final["class"])
            except (KeyError, IndexError, TypeError, ValueError):
                raise RouterError(502, "cloud answer lacks predictions[0]") from None
            if not 0.0 <= final_conf <= 1.0:  # NaN fails too
                raise RouterError(502, f"cloud answered confidence {str(final_conf)[:20]}")
            if not 0 <= final_class < len(names):
                raise RouterError(502, f"cloud answered class {final_class} of {len(names)}")
        except RouterError as exc:
            timings["cloud_ms"] = _ms(t)
            _best_branch(out, conf, pred, names, pair)
            out.update(degraded=True, degraded_reason=str(exc), degraded_kind=degraded_kind(exc))
            return
        timings["cloud_ms"] = _ms(t)
        d = decide(np.array([[*conf, final_conf]]), np.array([[*pred, final_class]]), options.threshold)
        k = int(d.exit_index[0])
        # exit names from the edge manifest's side branches and the cloud's answer (the final exit)
        final_name = str(final.get("exit_name") or f"exit{len(conf)}")
        out.update(
            exit=k,
            exit_name=pair.edge.exits[k].name if k < len(conf) else final_name,
            **{"class": int(d.prediction[0])},
            class_name=names[int(d.prediction[0])],
            confidence=float(d.confidence[0]),
        )

    async def _cloud_only(self, body: bytes, options: Options, started: float, deadline: float) -> dict:
        """The baseline without the edge: the image goes to the cloud's full_<expert> archive."""
        expert = options.expert or experts.CONVENTIONAL
        answer = (
            await self._call(
                "cloud",
                experts.archive_name("full", expert),
                body,
                {},
                deadline,
                f"cloud: full_{expert} (python -m export.archive --full)",
                missing_status=404,
            )
        ).json("cloud")
        try:
            fields = {k: answer[k] for k in ("exit", "exit_name", "class", "class_name", "confidence")}
        except KeyError as exc:
            raise RouterError(502, f"cloud answer lacks {exc}") from None
        total = round(_ms(started), 3)
        return {
            "expert": expert,
            "distortion": None,
            "distortion_probabilities": None,
            "threshold": None,
            "offloaded": True,
            "offloaded_bytes": len(body),
            "compression": "image",
            "degraded": False,
            **fields,
            "timings_ms": {"cloud_ms": total, "total_ms": total},
        }

    async def _call(
        self,
        role: str,
        model: str,
        body: bytes,
        headers: dict,
        deadline: float,
        step: str,
        missing_status: int = 503,
    ) -> Reply:
        """One upstream call within what is left of the deadline. A 404 (no such model) becomes
        `missing_status`: 503 for a model discovery listed (it went away), 404 for one the request
        named."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise RouterError(504, f"deadline passed before the {step} step")
        try:
            reply = await self.upstream.post(role, model, body, headers, remaining)
        except UpstreamTimeout:
            raise RouterError(504, f"{step} did not answer within the deadline") from None
        except UpstreamUnreachable as exc:
            why = " ".join(str(exc).split())[:240]  # e.g. the TLS check that failed, one line
            raise RouterError(502, f"{step} unreachable" + (f": {why}" if why else "")) from None
        if reply.status == 404:
            raise RouterError(missing_status, f"{step}: {reply.reason()}")
        if token_refused(reply.status, reply.content):
            # the router's credentials were refused, not the device's image: a server-side failure
            raise RouterError(502, f"{step} refused the router's token: {reply.reason()}")
        if 400 <= reply.status < 500:
            # the image or tensor was refused: pass the handler's one-line reason on
            raise RouterError(reply.status, f"{step}: {reply.reason()}")
        if reply.status != 200:
            raise RouterError(502, f"{step} answered {reply.status}: {reply.reason()}")
        return reply


def _branches(branches: object, count: int, classes: int) -> tuple[list[float], list[int]]:
    """The side branches' (confidence, class) from an offloading edge answer: one per side branch
    of the expert, in order (the final-exit rule and the exit names count on their positions)."""
    try:
        conf = [_json_number(b["confidence"]) for b in branches]
        pred = [_json_int(b["class"]) for b in branches]
    except (KeyError, TypeError, ValueError):
        raise RouterError(502, "edge offloaded with malformed branch answers") from None
    if not all(0.0 <= c <= 1.0 for c in conf):  # NaN fails too: the exit rule must compare real numbers
        raise RouterError(502, "edge offloaded with a branch confidence outside [0, 1]")
    if len(conf) != count:
        raise RouterError(502, f"edge offloaded with {len(conf)} branch answers, not {count}")
    if not all(0 <= c < classes for c in pred):
        raise RouterError(502, f"edge offloaded with a branch class outside 0..{classes - 1}: {pred}")
    return conf, pred


def _json_number(value: object) -> float:
    """A JSON number (not a bool or a string) as a float; TypeError otherwise."""
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _json_int(value: object) -> int:
    """A JSON integer (not a bool, a float or a string); TypeError otherwise."""
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _index_in(value: object, n: int) -> bool:
    """A JSON integer (not a bool or a float) in 0..n-1."""
    return type(value) is int and 0 <= value < n


def _best_branch(out: dict, conf: list, pred: list, names: list[str], pair: ExpertPair) -> None:
    k = int(np.argmax(conf))
    out.update(
        exit=k,
        exit_name=pair.edge.exits[k].name,
        **{"class": int(pred[k])},
        class_name=names[int(pred[k])],
        confidence=float(conf[k]),
    )


def degraded_kind(exc: RouterError) -> str:
    """Why the cloud step failed, as a metric label: deadline, cloud_error (unreachable, 5xx, or its
    model went away: 503) or cloud_refused (the cloud refused the tensor: 4xx)."""
    return {504: "deadline", 502: "cloud_error", 503: "cloud_error"}.get(exc.status, "cloud_refused")


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
