"""Wire formats: round-trips, the static request, the params merge and every malformed case."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from node.errors import HaorchError, MalformedMessage
from node.model.limits import MAX_MESSAGE_BYTES
from node.model.messages import (
    RESPONSES_PER_MESSAGE,
    Rejected,
    StaticRequest,
    SubmissionNotice,
    TaskRequest,
    TaskResponse,
    pack_responses,
    static_request_bytes,
    unpack_responses,
)
from node.model.template import TaskSpec

SPEC = TaskSpec(name="work_1", kind="job_submission", executor="sleep", params={"ms": 5, "tag": "tpl"}, timeout_s=9.5)
REQUEST = TaskRequest(
    experiment_id="exp-1",
    task="work_1",
    kind="job_submission",
    executor="sleep",
    params={"ms": 5, "note": "ünïcode"},
    timeout_s=9.5,
    attempt=2,
    epoch=7,
    dispatched_at=1700000000.25,
)
SUCCESS = TaskResponse(
    experiment_id="exp-1",
    task="work_1",
    attempt=2,
    outcome="success",
    result={"slept_ms": 5},
    error=None,
    worker="worker-3",
    started_at=1700000000.5,
    ended_at=1700000001.0,
)
FAILURE = replace(SUCCESS, attempt=1, outcome="failure", result=None, error="injected failure", replayed=True)


def body(message: Any, **changes: Any) -> bytes:
    """The JSON of ``message`` with some fields changed (a value of ``...`` removes the field)."""
    data = json.loads(message.encode())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


def reason_of(cls: type, raw: bytes) -> str:
    with pytest.raises(MalformedMessage) as caught:
        cls.decode(raw)
    assert str(caught.value) == f"malformed message: {caught.value.reason}"
    return caught.value.reason


# --- round-trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [REQUEST, SUCCESS, FAILURE, SubmissionNotice("exp-9")], ids=repr)
def test_round_trip(message: Any) -> None:
    assert type(message).decode(message.encode()) == message


def test_encoding_is_compact_utf8_json_with_version() -> None:
    raw = REQUEST.encode()
    assert raw.startswith(b'{"v":1,"experiment_id":"exp-1",')
    assert b" " not in raw.replace("ünïcode".encode(), b"")
    assert "ünïcode".encode() in raw
    assert SubmissionNotice("e").encode() == b'{"v":1,"experiment_id":"e"}'


def test_integers_are_accepted_as_numbers() -> None:
    decoded = TaskResponse.decode(body(SUCCESS, started_at=5, ended_at=6))
    assert (decoded.started_at, decoded.ended_at) == (5.0, 6.0)
    assert isinstance(decoded.started_at, float)


def test_replayed_defaults_to_false() -> None:
    assert TaskResponse.decode(body(SUCCESS, replayed=...)).replayed is False


# --- static request and params ------------------------------------------------------------------


def test_static_request_holds_everything_but_the_attempt() -> None:
    blob = static_request_bytes("exp-1", SPEC, {})
    assert set(json.loads(blob)) == {"v", "experiment_id", "task", "kind", "executor", "params", "timeout_s"}
    assert StaticRequest.decode(blob) == StaticRequest("exp-1", "work_1", "job_submission", "sleep",
                                                       {"ms": 5, "tag": "tpl"}, 9.5)  # fmt: skip


def test_experiment_params_override_template_params() -> None:
    blob = static_request_bytes("exp-1", SPEC, {"ms": "50", "extra": "x"})
    assert StaticRequest.decode(blob).params == {"ms": "50", "tag": "tpl", "extra": "x"}
    assert SPEC.params == {"ms": 5, "tag": "tpl"}


def test_request_from_static() -> None:
    blob = static_request_bytes("exp-1", SPEC, {"tag": "exp"})
    request = TaskRequest.from_static(blob, attempt=3, epoch=11, dispatched_at=42.0)
    assert request == TaskRequest("exp-1", "work_1", "job_submission", "sleep", {"ms": 5, "tag": "exp"}, 9.5,
                                  attempt=3, epoch=11, dispatched_at=42.0)  # fmt: skip
    assert TaskRequest.decode(request.encode()) == request


def test_from_static_rejects_a_malformed_blob() -> None:
    blob = body(StaticRequest.decode(static_request_bytes("e", SPEC, {})), timeout_s=...)
    with pytest.raises(MalformedMessage, match="missing field 'timeout_s'"):
        TaskRequest.from_static(blob, 1, 1, 0.0)
    with pytest.raises(MalformedMessage, match="unknown field 'attempt'"):
        TaskRequest.from_static(REQUEST.encode(), 1, 1, 0.0)


# --- malformed ----------------------------------------------------------------------------------


def test_malformed_message_is_a_haorch_error() -> None:
    assert issubclass(MalformedMessage, HaorchError)
    assert MalformedMessage("x").reason == "x"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b'{"v":1,"experiment_id":NaN}', "not JSON"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b'"text"', "not a JSON object but a string"),
        (b"null", "not a JSON object but null"),
        (b'{"experiment_id":"e"}', "missing field 'v'"),
        (b'{"v":2,"experiment_id":"e"}', "unknown version 2"),
        (b'{"v":"1","experiment_id":"e"}', "unknown version '1'"),
        (b'{"v":true,"experiment_id":"e"}', "unknown version True"),
        (b'{"v":1}', "missing field 'experiment_id'"),
        (b'{"v":1,"experiment_id":5}', "field 'experiment_id' must be a string, got a number"),
        (b'{"v":1,"experiment_id":"e","x":1}', "unknown field 'x'"),
    ],
)
def test_malformed_envelope(raw: bytes, reason: str) -> None:
    assert reason_of(SubmissionNotice, raw) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"task": ...}, "missing field 'task'"),
        ({"attempt": "2"}, "field 'attempt' must be an integer, got a string"),
        ({"attempt": 2.0}, "field 'attempt' must be an integer, got a number"),
        ({"attempt": True}, "field 'attempt' must be an integer, got a boolean"),
        ({"attempt": 0}, "attempt must be within 1..2147483647, got 0"),
        ({"epoch": None}, "field 'epoch' must be an integer, got null"),
        ({"params": []}, "field 'params' must be an object, got an array"),
        ({"timeout_s": "9"}, "field 'timeout_s' must be a number, got a string"),
        ({"timeout_s": 0}, "timeout_s must be > 0, got 0.0"),
        ({"dispatched_at": False}, "field 'dispatched_at' must be a number, got a boolean"),
    ],
)
def test_malformed_request(changes: dict[str, Any], reason: str) -> None:
    assert reason_of(TaskRequest, body(REQUEST, **changes)) == reason


ONLY_WAITING = "recheck_after_s and waiting_on come with a waiting outcome, and only with it"


@pytest.mark.parametrize(
    ("message", "changes", "reason"),
    [
        (SUCCESS, {"outcome": "ok"}, "field 'outcome' must be one of success, failure, waiting, got 'ok'"),
        (SUCCESS, {"outcome": 1}, "field 'outcome' must be one of success, failure, waiting, got 1"),
        (SUCCESS, {"result": "x"}, "field 'result' must be an object or null, got a string"),
        (SUCCESS, {"error": "boom"}, "a success carries no error"),
        (FAILURE, {"error": None}, "a failure needs an error"),
        (FAILURE, {"error": 3}, "field 'error' must be a string or null, got a number"),
        (FAILURE, {"replayed": 1}, "field 'replayed' must be a boolean, got a number"),
        (FAILURE, {"worker": ...}, "missing field 'worker'"),
        (FAILURE, {"attempt": -1}, "attempt must be within 1..2147483647, got -1"),
        (SUCCESS, {"outcome": "waiting"}, ONLY_WAITING),
        (SUCCESS, {"recheck_after_s": 2}, ONLY_WAITING),
        (SUCCESS, {"outcome": "waiting", "recheck_after_s": 0, "waiting_on": "job"},
         "recheck_after_s must be within (0, 3600], got 0.0"),
        (FAILURE, {"outcome": "waiting", "recheck_after_s": 1, "waiting_on": "job"},
         "a waiting response carries no error and is neither lost nor replayed"),
    ],
)
def test_malformed_response(message: TaskResponse, changes: dict[str, Any], reason: str) -> None:
    assert reason_of(TaskResponse, body(message, **changes)) == reason


def test_a_message_of_another_kind_is_malformed() -> None:
    assert reason_of(TaskResponse, REQUEST.encode()) == "unknown field 'kind'"
    assert reason_of(SubmissionNotice, SUCCESS.encode()) == "unknown field 'task'"


def test_wire_from_static_decodes_to_the_same_request_as_from_static():
    from node.model.messages import TaskRequest, static_request_bytes
    from node.model.template import TaskSpec

    blob = static_request_bytes("exp-9", TaskSpec(name="a", kind="k", executor="sleep", params={"ms": 5}), {"x": "1"})
    wire = TaskRequest.wire_from_static(blob, attempt=2, epoch=7, dispatched_at=1700000000.25)
    assert TaskRequest.decode(wire) == TaskRequest.from_static(blob, 2, 7, 1700000000.25)


def _responses(n: int, result_bytes: int = 0) -> list[TaskResponse]:
    return [TaskResponse(experiment_id="e", task=f"t{i}", attempt=1, outcome="success",
                         result={"x": "y" * result_bytes}, error=None, worker="w", started_at=1.0, ended_at=2.0)
            for i in range(n)]


def test_responses_are_packed_up_to_a_count_and_a_size_and_unpacked_in_order() -> None:
    many = _responses(RESPONSES_PER_MESSAGE + 1)
    bodies = pack_responses(many)
    assert [len(unpack_responses(b)) for b in bodies] == [RESPONSES_PER_MESSAGE, 1]
    assert [r for b in bodies for r in unpack_responses(b)] == many
    big = _responses(8, result_bytes=50_000)  # 8 × ~50 KB: not within one message
    bodies = pack_responses(big)
    assert len(bodies) == 2 and all(len(b) <= MAX_MESSAGE_BYTES for b in bodies)
    assert [r for b in bodies for r in unpack_responses(b)] == big
    assert pack_responses([]) == []


def test_a_single_response_object_is_still_read() -> None:
    (one,) = _responses(1)
    assert unpack_responses(one.encode()) == [one]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[]", "an empty pack of responses"),
    (b"7", "neither a response object nor a pack of them but a number"),
    (b"[1", "not JSON"),
])
def test_a_message_that_is_no_pack_is_malformed_as_a_whole(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        unpack_responses(raw)


def test_the_bad_items_of_a_pack_are_rejected_alone_with_their_reason_and_body() -> None:
    (one,) = _responses(1)
    items = unpack_responses(b"[" + one.encode() + b',"x",{"v":2},{"v":1,"task":"\\ud800"}]')
    assert items[0] == one
    assert items[1:] == [Rejected(b'"x"', "pack item 1: not a JSON object but a string"),
                         Rejected(b'{"v":2}', "pack item 2: unknown version 2"),
                         Rejected(b'{"v":1,"task":"\\ud800"}', items[3].reason)]
    assert isinstance(items[3], Rejected) and items[3].reason.startswith("pack item 3: ")
