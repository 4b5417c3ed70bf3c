"""The router's decisions (edge_router.decisions) against a fake upstream: no HTTP, no servers."""

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from core import wire
from core.imaging import encode_image
from core.manifest import Manifest
from edge_router.decisions import Decider, Reply, UpstreamTimeout, UpstreamUnreachable
from edge_router.discovery import Catalogue, ExpertPair
from edge_router.options import Defaults, Options, RouterError, parse_options
from tests.conftest import textured_image

ONNX = Path(__file__).resolve().parents[1] / "models" / "onnx"


def manifests(name):
    return tuple(Manifest.load(ONNX / f"{role}_{name}.json") for role in ("edge", "cloud"))


def expert_pair(name):
    edge, _ = manifests(name)
    return ExpertPair(name, edge.distortion, edge, ("cloud",))


CATALOGUE = Catalogue(experts={n: expert_pair(n) for n in ("pristine", "gaussian_blur")})
NAMES = CATALOGUE.experts["gaussian_blur"].edge.class_names
# every exit's name as the manifests give them: the side branches', then the cloud's final exit
EXITS = [e.name for m in manifests("gaussian_blur") for e in m.exits]
IMAGE = encode_image(textured_image(0, 16))
OPTIONS = Options(threshold=0.8, compression="fp32", deadline_s=2.0, expert=None, mode="auto")


@dataclass
class Call:
    role: str
    model: str
    body: bytes
    headers: dict
    timeout_s: float


class FakeUpstream:
    """Scripted replies, one per call: a Reply, an exception to raise, ("slow", s, reply) honouring
    the timeout like the real client, or ("late", s, reply) answering after s whatever the timeout."""

    def __init__(self, *script):
        self.script, self.calls = list(script), []

    async def post(self, role, model, body, headers, timeout_s):
        self.calls.append(Call(role, model, body, dict(headers), timeout_s))
        step = self.script.pop(0)
        if isinstance(step, tuple):
            kind, delay, step = step
            if kind == "slow" and delay >= timeout_s:
                await asyncio.sleep(timeout_s)
                raise UpstreamTimeout()
            await asyncio.sleep(delay)
        if isinstance(step, Exception):
            raise step
        return step


def json_reply(status=200, **data):
    return Reply(status, {"Content-Type": "application/json"}, json.dumps(data).encode())


def edge_exit(k=1, cls=3, conf=0.93):
    return json_reply(
        exited=True, exit=k, exit_name=f"branch{k}", **{"class": cls}, class_name=NAMES[cls], confidence=conf
    )


def split_reply(conf=(0.3, 0.5, 0.6), pred=(1, 2, 3), compression="fp32", branches=None):
    if branches is None:
        branches = [
            {"exit": k, "confidence": c, "class": p} for k, (c, p) in enumerate(zip(conf, pred, strict=True))
        ]
    body, n = wire.encode(
        np.ones((1, 160, 2, 2), np.float32),
        name="stage2",
        compression=compression,
        parameters={"exited": False, "branches": branches},
    )
    return Reply(200, {wire.HEADER_LENGTH: str(n), "Content-Type": wire.CONTENT_TYPE}, body)


def cloud_reply(cls=7, conf=0.9):
    final = manifests("gaussian_blur")[1].exits[0]  # as the cloud handler answers
    prediction = {"class": cls, "class_name": "x", "confidence": conf, "exit": final.index}
    return json_reply(predictions=[{**prediction, "exit_name": final.name}])


def classifier(distortion="gaussian_blur", delay=0.0):
    async def classify(body):
        assert body == IMAGE
        await asyncio.sleep(delay)
        return distortion, {distortion: 0.9, "pristine": 0.1}

    return classify


def answer(upstream, classify=None, body=IMAGE, **options):
    decider = Decider(lambda: CATALOGUE, classify or classifier(), upstream)
    return asyncio.run(decider.answer(body, replace(OPTIONS, **options)))


def refusal(upstream, classify=None, body=IMAGE, **options) -> RouterError:
    with pytest.raises(RouterError) as info:
        answer(upstream, classify, body, **options)
    return info.value


def test_a_confident_side_branch_answers_on_the_classifiers_expert():
    up = FakeUpstream(edge_exit(k=1, cls=3, conf=0.93))
    out = answer(up, threshold=0.7, compression="int8")
    assert (out["exit"], out["exit_name"], out["class"], out["confidence"]) == (1, "branch1", 3, 0.93)
    assert out["class_name"] == NAMES[3] and out["offloaded"] is False and out["offloaded_bytes"] == 0
    assert out["expert"] == out["distortion"] == "gaussian_blur" and out["degraded"] is False
    assert out["distortion_probabilities"] == {"gaussian_blur": 0.9, "pristine": 0.1}
    [call] = up.calls
    assert (call.role, call.model, call.body) == ("edge", "edge_gaussian_blur", IMAGE)
    assert call.headers == {"X-Exit-Threshold": "0.7", "X-Offload-Compression": "int8"}
    assert {"classifier_ms", "edge_ms", "total_ms"} <= set(out["timings_ms"])


@pytest.mark.parametrize(
    "conf, final_conf, exit_, cls",
    [
        ((0.3, 0.5, 0.6), 0.9, 3, 7),  # the final exit reaches the threshold
        ((0.3, 0.75, 0.6), 0.7, 1, 2),  # nothing does: the most confident exit of all (branch1)
        ((0.3, 0.5, 0.6), 0.65, 3, 7),  # nothing does: the final exit is the most confident
    ],
)
@pytest.mark.parametrize("compression, itemsize", [("fp32", 4), ("fp16", 2)])
def test_offload_sends_the_split_unchanged_and_the_exit_rule_decides(
    conf, final_conf, exit_, cls, compression, itemsize
):
    edge = split_reply(conf, compression=compression)
    up = FakeUpstream(edge, cloud_reply(7, final_conf))
    out = answer(up, compression=compression)
    cloud = up.calls[1]
    assert (cloud.role, cloud.model, cloud.body) == ("cloud", "cloud_gaussian_blur", edge.content)
    assert cloud.headers == {
        wire.HEADER_LENGTH: edge.headers[wire.HEADER_LENGTH],
        "Content-Type": wire.CONTENT_TYPE,
    }
    assert out["offloaded"] is True and out["degraded"] is False and out["compression"] == compression
    assert out["offloaded_bytes"] == 160 * 2 * 2 * itemsize
    assert (out["exit"], out["class"], out["class_name"]) == (exit_, cls, NAMES[cls])
    assert out["exit_name"] == EXITS[exit_]
    assert "cloud_ms" in out["timings_ms"]


def test_a_deadline_passed_before_the_edge_step_is_504():
    up = FakeUpstream(edge_exit())
    exc = refusal(up, classifier(delay=0.08), deadline_s=0.05)
    assert exc.status == 504 and "before the edge step" in str(exc) and up.calls == []


def test_an_edge_that_misses_the_deadline_is_504():
    exc = refusal(FakeUpstream(("slow", 5.0, edge_exit())), deadline_s=0.05)
    assert exc.status == 504 and "edge did not answer" in str(exc)


@pytest.mark.parametrize("edge_step", [("late", 0.08, split_reply()), split_reply()])
def test_a_cloud_past_the_deadline_degrades_to_the_best_edge_branch(edge_step):
    up = FakeUpstream(edge_step, ("slow", 5.0, cloud_reply()))
    out = answer(up, deadline_s=0.05)
    assert out["degraded"] is True and out["degraded_kind"] == "deadline"
    assert (out["exit"], out["exit_name"], out["class"], out["confidence"]) == (2, "branch2", 3, 0.6)
    assert out["offloaded"] is True
    assert len(up.calls) == (1 if isinstance(edge_step, tuple) else 2)  # a late edge: the cloud not tried


@pytest.mark.parametrize(
    "cloud_step, kind",
    [
        (json_reply(500, error="worker died"), "cloud_error"),
        (UpstreamUnreachable("refused"), "cloud_error"),
        (json_reply(200, oops=1), "cloud_error"),  # no predictions
        (Reply(200, {}, b"<html>"), "cloud_error"),  # not JSON
        (json_reply(400, error="bad tensor"), "cloud_refused"),
        (json_reply(413, error="too big"), "cloud_refused"),
        (json_reply(400, message="Token Authorization failed. Token expired"), "cloud_error"),
    ],
)
def test_a_failing_cloud_degrades(cloud_step, kind):
    out = answer(FakeUpstream(split_reply((0.7, 0.5, 0.6), (4, 2, 3)), cloud_step))
    assert out["degraded"] is True and out["degraded_kind"] == kind and out["degraded_reason"]
    assert (out["exit"], out["class"], out["class_name"]) == (0, 4, NAMES[4])


def test_a_cloud_model_that_went_away_degrades():
    out = answer(FakeUpstream(split_reply(), json_reply(404, message="Model not found")))
    assert out["degraded"] is True and "Model not found" in out["degraded_reason"]


@pytest.mark.parametrize(
    "edge_step, status",
    [
        (json_reply(500, error="worker died"), 502),
        (json_reply(503, error="busy"), 502),
        (UpstreamUnreachable("refused"), 502),
        (json_reply(404, message="Model not found"), 503),  # a discovered model went away
        (json_reply(415, error="not an image"), 415),  # the handler's refusal passes on
        (json_reply(400, error="threshold"), 400),
        (json_reply(400, message="Token Authorization failed. Token either incorrect"), 502),
        (Reply(200, {}, b"not json"), 502),
        (json_reply(exited=True, exit=1), 502),  # JSON lacking the answer
        (Reply(200, {wire.HEADER_LENGTH: "9"}, b"{garbage}xx"), 502),  # a malformed tensor
    ],
)
def test_edge_failures_refuse_the_request(edge_step, status):
    up = FakeUpstream(edge_step, cloud_reply())
    exc = refusal(up)
    assert exc.status == status and str(exc) and len(up.calls) == 1  # the cloud is never tried
    if status == 415:
        assert "not an image" in str(exc)


def test_timeouts_are_what_is_left_of_the_deadline():
    up = FakeUpstream(("slow", 0.05, split_reply()), cloud_reply())
    answer(up, deadline_s=0.5)
    edge, cloud = up.calls
    assert 0.4 < edge.timeout_s <= 0.5
    assert 0 < cloud.timeout_s <= edge.timeout_s - 0.045


@pytest.mark.parametrize("expert, model", [(None, "full_conventional"), ("pristine", "full_pristine")])
def test_cloud_only_sends_the_image_to_the_full_archive(expert, model):
    up = FakeUpstream(
        json_reply(exit=3, exit_name="final", **{"class": 2}, class_name=NAMES[2], confidence=0.8)
    )
    decider = Decider(lambda: CATALOGUE, None, up)  # no classifier needed
    out = asyncio.run(decider.answer(IMAGE, replace(OPTIONS, mode="cloud_only", expert=expert)))
    [call] = up.calls
    assert (call.role, call.model, call.body) == ("cloud", model, IMAGE)
    assert out["expert"] == model[5:] and out["offloaded_bytes"] == len(IMAGE)
    assert (out["exit"], out["class"], out["compression"], out["degraded"]) == (3, 2, "image", False)


@pytest.mark.parametrize(
    "cloud_step, status",
    [
        (json_reply(404, message="Model not found"), 404),
        (("slow", 5.0, None), 504),
        (json_reply(500), 502),
        (json_reply(exit=3), 502),
    ],
)
def test_cloud_only_failures(cloud_step, status):
    exc = refusal(FakeUpstream(cloud_step), mode="cloud_only", deadline_s=0.05)
    assert exc.status == status
    if status == 404:
        assert "export.archive --full" in str(exc)


def test_edge_only_never_offloads():
    up = FakeUpstream(split_reply((0.3, 0.75, 0.6), (1, 2, 3)), cloud_reply())
    out = answer(up, mode="edge_only")
    assert len(up.calls) == 1 and out["offloaded"] is False and out["degraded"] is False
    assert (out["exit"], out["class"], out["confidence"]) == (1, 2, 0.75) and "exit_note" in out
    assert refusal(FakeUpstream(split_reply(branches=[])), mode="edge_only").status == 502


def test_an_expert_named_by_the_request_skips_the_classifier():
    async def never(body):
        raise AssertionError("the classifier ran")

    up = FakeUpstream(edge_exit())
    out = answer(up, never, expert="pristine")
    assert up.calls[0].model == "edge_pristine" and out["expert"] == "pristine"
    assert out["distortion"] is None and "classifier_ms" not in out["timings_ms"]


def test_expert_refusals():
    exc = refusal(FakeUpstream(), expert="gaussian_noise")
    assert exc.status == 404 and "known: gaussian_blur, pristine" in str(exc)
    exc = refusal(FakeUpstream(), classifier("gaussian_noise"))
    assert exc.status == 503 and "gaussian_noise" in str(exc)
    decider = Decider(lambda: CATALOGUE, None, FakeUpstream())
    with pytest.raises(RouterError) as info:
        asyncio.run(decider.answer(IMAGE, OPTIONS))
    assert info.value.status == 503 and "classifier" in str(info.value)


@pytest.mark.parametrize(
    "body, status",
    [(b"", 400), (b"GIF89a" + bytes(40), 415), (IMAGE[:20], 400), (IMAGE + bytes(10_000), 413)],
)
def test_bodies_are_checked_before_any_upstream(body, status):
    up = FakeUpstream()
    decider = Decider(lambda: CATALOGUE, classifier(), up, Defaults(max_body_bytes=len(IMAGE) + 100))
    with pytest.raises(RouterError) as info:
        asyncio.run(decider.answer(body, OPTIONS))
    assert info.value.status == status and up.calls == []


def test_parse_options_defaults_and_values():
    assert parse_options({}, Defaults()) == Options(0.8, "fp32", 2.0, None, "auto")
    got = parse_options(
        {
            "threshold": ["0.5"],
            "compression": ["FP16"],
            "deadline_ms": ["100"],
            "expert": ["gaussian_blur"],
            "mode": ["Edge_Only"],
        },
        Defaults(),
    )
    assert got == Options(0.5, "fp16", 0.1, "gaussian_blur", "edge_only")


@pytest.mark.parametrize(
    "params, match",
    [
        ({"threshold": ["abc"]}, "not a number"),
        ({"threshold": ["0"]}, "threshold must be"),
        ({"threshold": ["1.5"]}, "threshold must be"),
        ({"threshold": ["nan"]}, "threshold must be"),
        ({"threshold": [""]}, "not a number"),
        ({"deadline_ms": ["10"]}, "at least 50"),
        ({"deadline_ms": ["inf"]}, "deadline_ms must be"),
        ({"compression": ["bf16"]}, "compression"),
        ({"mode": ["fast"]}, "mode"),
        ({"expert": ["../etc"]}, "expert"),
        ({"expert": [""]}, "expert"),
        ({"expert": ["a" * 65]}, "expert"),
        ({"threshold": ["0.5", "0.6"]}, "more than once"),
        ({"foo": ["1"], "bar": [""]}, "unknown query parameter.*'bar', 'foo'"),
    ],
)
def test_parse_options_refuses_odd_values(params, match):
    with pytest.raises(RouterError, match=match) as info:
        parse_options(params, Defaults())
    assert info.value.status == 400


def test_a_cloud_class_out_of_range_degrades():
    out = answer(FakeUpstream(split_reply(), cloud_reply(cls=99, conf=0.95)))
    assert out["degraded"] is True


@pytest.mark.parametrize("branches", [[], [{"exit": 0, "confidence": 0.3, "class": 1}]])
def test_an_offload_without_every_branch_is_refused(branches):
    exc = refusal(FakeUpstream(split_reply(branches=branches), cloud_reply(7, 0.95)))
    assert exc.status == 502


def test_edge_branches_without_confidence_are_a_502():
    exc = refusal(FakeUpstream(split_reply(branches=[{"exit": 0, "class": 1}]), cloud_reply()))
    assert exc.status == 502


def test_a_cloud_that_names_no_exit_gets_a_name_from_its_position():
    plain = json_reply(predictions=[{"class": 7, "confidence": 0.99}])  # e.g. a Triton model of ours
    out = answer(FakeUpstream(split_reply([0.1, 0.2, 0.3]), plain))
    assert (out["exit"], out["exit_name"]) == (len(EXITS) - 1, f"exit{len(EXITS) - 1}")


# -- one focused test per check of what the edge and the cloud answered ----------------------------
def edge_answer(**fields):
    data = {"exited": True, "exit": 1, "exit_name": "branch1", "class": 3, "class_name": NAMES[3]}
    return json_reply(**{**data, "confidence": 0.93, **fields})


@pytest.mark.parametrize(
    "content, reason",
    [(b"not json", "edge returned no JSON"), (b"[1, 2]", "edge returned unexpected JSON")],
)
def test_an_edge_answer_that_is_not_a_json_object_is_a_502(content, reason):
    exc = refusal(FakeUpstream(Reply(200, {}, content)))
    assert exc.status == 502 and str(exc) == reason


@pytest.mark.parametrize("key", ["exit", "exit_name", "class", "class_name", "confidence"])
def test_an_edge_answer_lacking_a_field_is_a_502(key):
    reply = edge_answer()
    data = json.loads(reply.content)
    del data[key]
    exc = refusal(FakeUpstream(json_reply(**data)))
    assert exc.status == 502 and str(exc) == f"edge answer lacks '{key}'"


@pytest.mark.parametrize("exit_", [-1, 3, "1", 1.0, True, None])
def test_an_edge_exit_outside_the_side_branches_is_a_502(exit_):
    exc = refusal(FakeUpstream(edge_answer(exit=exit_)))
    assert exc.status == 502 and str(exc).startswith(f"edge answered exit {str(exit_)[:20]} of 3")


@pytest.mark.parametrize("cls", [-1, len(NAMES), "3", 3.0, False, None])
def test_an_edge_class_outside_the_manifests_classes_is_a_502(cls):
    exc = refusal(FakeUpstream(edge_answer(**{"class": cls})))
    assert exc.status == 502 and str(exc) == f"edge answered class {str(cls)[:20]} of {len(NAMES)}"


@pytest.mark.parametrize("exit_, cls", [(0, 0), (2, len(NAMES) - 1)])
def test_an_edge_answer_at_the_ends_of_the_ranges_is_served(exit_, cls):
    out = answer(FakeUpstream(edge_answer(exit=exit_, **{"class": cls})))
    assert (out["exit"], out["class"]) == (exit_, cls)


def test_a_malformed_edge_tensor_is_a_502():
    exc = refusal(FakeUpstream(Reply(200, {wire.HEADER_LENGTH: "9"}, b"{garbage}xx")))
    assert exc.status == 502 and str(exc).startswith("edge returned a malformed tensor: ")


@pytest.mark.parametrize(
    "branches",
    [
        None,  # the tensor's parameters name no branches
        "branches",
        [{"exit": 0, "class": 1}] * 3,  # no confidence
        [{"exit": 0, "confidence": 0.3}] * 3,  # no class
        [{"exit": 0, "confidence": "high", "class": 1}] * 3,
        [{"exit": 0, "confidence": 0.3, "class": "one"}] * 3,
        [{"exit": 0, "confidence": 0.3, "class": "1"}] * 3,
        [{"exit": 0, "confidence": 0.3, "class": 1.5}] * 3,
        [{"exit": 0, "confidence": 0.3, "class": True}] * 3,
        [{"exit": 0, "confidence": "0.3", "class": 1}] * 3,
        [7, 8, 9],
    ],
)
def test_malformed_branch_answers_are_a_502(branches):
    reply = split_reply(branches=branches)
    if branches is None:  # an offloaded tensor whose parameters lack `branches` altogether
        body, n = wire.encode(
            np.ones((1, 160, 2, 2), np.float32), name="stage2", parameters={"exited": False}
        )
        reply = Reply(200, {wire.HEADER_LENGTH: str(n)}, body)
    exc = refusal(FakeUpstream(reply, cloud_reply()))
    assert exc.status == 502 and str(exc) == "edge offloaded with malformed branch answers"


@pytest.mark.parametrize("conf", [-0.1, 1.5])
def test_an_offloaded_branch_confidence_outside_0_1_is_a_502(conf):
    up = FakeUpstream(split_reply(conf=(0.3, conf, 0.6)), cloud_reply())
    exc = refusal(up)
    assert exc.status == 502 and str(exc) == "edge offloaded with a branch confidence outside [0, 1]"
    assert len(up.calls) == 1  # refused before the cloud


@pytest.mark.parametrize("count", [0, 2, 4])
def test_an_offload_without_one_answer_per_side_branch_is_a_502(count):
    branches = [{"exit": k, "confidence": 0.3, "class": 1} for k in range(count)]
    exc = refusal(FakeUpstream(split_reply(branches=branches), cloud_reply()))
    assert exc.status == 502 and str(exc) == f"edge offloaded with {count} branch answers, not 3"


@pytest.mark.parametrize("cls", [-1, len(NAMES)])
def test_an_offloaded_branch_class_out_of_range_is_a_502(cls):
    up = FakeUpstream(split_reply(pred=(1, cls, 2)), cloud_reply())
    exc = refusal(up)
    assert exc.status == 502 and str(exc).startswith(
        f"edge offloaded with a branch class outside 0..{len(NAMES) - 1}"
    )
    assert len(up.calls) == 1  # refused before the cloud


def test_offloaded_branch_classes_at_the_ends_of_the_range_are_served():
    out = answer(FakeUpstream(split_reply((0.3, 0.9, 0.4), (0, len(NAMES) - 1, 2)), cloud_reply(7, 0.1)))
    assert (out["exit"], out["class"], out["degraded"]) == (1, len(NAMES) - 1, False)


@pytest.mark.parametrize(
    "cloud, reason",
    [
        (json_reply(predictions=[]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions="x"), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": 1}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"confidence": 0.9}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": "one", "confidence": 0.9}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": 1, "confidence": "high"}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": "1", "confidence": 0.9}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": 1.0, "confidence": 0.9}]), "cloud answer lacks predictions[0]"),
        (json_reply(predictions=[{"class": 1, "confidence": "0.9"}]), "cloud answer lacks predictions[0]"),
        (cloud_reply(cls=1, conf=1.5), "cloud answered confidence 1.5"),
        (cloud_reply(cls=1, conf=-0.5), "cloud answered confidence -0.5"),
        (Reply(200, {}, b"[]"), "cloud returned unexpected JSON"),
        (Reply(200, {}, b"<html>"), "cloud returned no JSON"),
        (cloud_reply(cls=len(NAMES), conf=0.95), f"cloud answered class {len(NAMES)} of {len(NAMES)}"),
        (cloud_reply(cls=-1, conf=0.95), f"cloud answered class -1 of {len(NAMES)}"),
    ],
)
def test_a_cloud_answer_that_does_not_check_out_degrades_with_its_reason(cloud, reason):
    out = answer(FakeUpstream(split_reply((0.7, 0.5, 0.6), (4, 2, 3)), cloud))
    assert out["degraded"] is True and out["degraded_reason"] == reason
    assert out["degraded_kind"] == "cloud_error" and (out["exit"], out["class"]) == (0, 4)


@pytest.mark.parametrize("cls", [0, len(NAMES) - 1])
def test_a_cloud_class_at_the_ends_of_the_range_is_served(cls):
    out = answer(FakeUpstream(split_reply(), cloud_reply(cls=cls, conf=0.95)))
    assert out["degraded"] is False and (out["exit"], out["class"]) == (3, cls)


@pytest.mark.parametrize("missing", ["exit", "exit_name", "class", "class_name", "confidence"])
def test_a_cloud_only_answer_lacking_a_field_is_a_502(missing):
    fields = {"exit": 3, "exit_name": "final", "class": 2, "class_name": NAMES[2], "confidence": 0.8}
    del fields[missing]
    exc = refusal(FakeUpstream(json_reply(**fields)), mode="cloud_only")
    assert exc.status == 502 and str(exc) == f"cloud answer lacks '{missing}'"


def _with_fallbacks(**fallbacks) -> Catalogue:
    """CATALOGUE, its classifier knowing motion blur, with the fallback table given."""
    shipped = Manifest.load(ONNX / "distortion_classifier.json")
    names = (*shipped.class_names, "motion_blur")
    classifier = replace(shipped, class_names=names, fallbacks=fallbacks)
    return replace(CATALOGUE, classifier=classifier, experts=dict(CATALOGUE.experts))


def test_a_type_without_its_expert_falls_back_as_the_classifier_manifest_says():
    catalogue = _with_fallbacks(motion_blur="gaussian_blur")
    up = FakeUpstream(edge_exit())
    decider = Decider(lambda: catalogue, classifier("motion_blur"), up)
    out = asyncio.run(decider.answer(IMAGE, OPTIONS))
    assert (out["expert"], out["distortion"]) == ("gaussian_blur", "motion_blur")
    assert out["fallback"] == {"from": "motion_blur", "reason": "no expert registered for motion_blur"}
    assert up.calls[0].model == "edge_gaussian_blur"
    # with its own expert registered, it answers and no fallback is said
    catalogue.experts["motion_blur"] = replace(expert_pair("gaussian_blur"), name="motion_blur")
    out = asyncio.run(
        Decider(lambda: catalogue, classifier("motion_blur"), FakeUpstream(edge_exit())).answer(
            IMAGE, OPTIONS
        )
    )
    assert out["expert"] == "motion_blur" and "fallback" not in out


def test_a_fallback_chain_that_runs_out_is_a_503_naming_every_type_tried():
    no_table = _with_fallbacks()
    err = refusal_with(no_table, "motion_blur")
    assert err.status == 503 and str(err) == "no expert registered for motion_blur"
    chain = _with_fallbacks(motion_blur="gaussian_noise", gaussian_noise="motion_blur")  # a cycle ends
    err = refusal_with(chain, "motion_blur")
    assert err.status == 503 and str(err) == "no expert registered for motion_blur or gaussian_noise"


def refusal_with(catalogue, distortion) -> RouterError:
    with pytest.raises(RouterError) as info:
        asyncio.run(Decider(lambda: catalogue, classifier(distortion), FakeUpstream()).answer(IMAGE, OPTIONS))
    return info.value
