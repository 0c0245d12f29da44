"""Property tests of the wire decoders (hypothesis): arbitrary bytes and arbitrary JSON — lone surrogates, huge
numbers, deep nesting, wrong types, message-shaped objects with one field replaced — decode to a message that every
store can take, or raise MalformedMessage; never anything else."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import GOOD, POISON, bodies, dumps

from node.errors import MalformedMessage
from node.model.limits import BIGINT_MAX, INT_MAX, MAX_ID_CHARS, MAX_NESTING
from node.model.messages import Rejected, StaticRequest, SubmissionNotice, TaskRequest, TaskResponse, unpack_responses

DECODERS = (TaskRequest, TaskResponse, SubmissionNotice, StaticRequest)
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _nested(depth: int) -> bytes:
    return dumps({**GOOD[TaskResponse], "result": {"r": json.loads("[" * depth + "]" * depth)}})


def assert_storable(message: Any) -> None:
    """What a decoded message promises the stores: UTF-8 text, bounded ids, numbers within their columns."""
    body = message.encode()
    body.decode("utf-8")
    assert type(message).decode(body) == message
    for name in ("experiment_id", "task", "kind", "executor", "worker"):
        value = getattr(message, name, "x")
        assert 0 < len(value) <= MAX_ID_CHARS and value.isprintable()
    if hasattr(message, "attempt"):
        assert 1 <= message.attempt <= INT_MAX
    assert 0 <= getattr(message, "epoch", 0) <= BIGINT_MAX
    for name in ("timeout_s", "dispatched_at", "started_at", "ended_at"):
        assert math.isfinite(getattr(message, name, 0.0))


def decode_or_reject(decoder: type, raw: bytes) -> None:
    try:
        message = decoder.decode(raw)
    except MalformedMessage as exc:
        assert exc.reason and "\n" not in exc.reason
        exc.reason.encode("utf-8")
        return
    assert_storable(message)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
@FUZZ
@given(data=st.data())
def test_any_body_decodes_to_a_storable_message_or_is_rejected(decoder: type, data: st.DataObject) -> None:
    """Arbitrary bytes, arbitrary JSON, or a good message with one field replaced by arbitrary JSON."""
    decode_or_reject(decoder, data.draw(bodies(decoder)))


@pytest.mark.parametrize("depth", [MAX_NESTING - 2, MAX_NESTING + 1, 5000])
def test_deep_nesting_is_rejected_past_the_bound(depth: int) -> None:
    if depth < MAX_NESTING:
        assert_storable(TaskResponse.decode(_nested(depth)))
    else:
        with pytest.raises(MalformedMessage):
            TaskResponse.decode(_nested(depth) if depth < 900 else b'{"v":1,"result":' + b"[" * depth + b"]" * depth
                                + b"}")


@pytest.mark.parametrize(("raw", "reason"), [
    (POISON, "field 'experiment_id' is not encodable as UTF-8"),
    (dumps({**GOOD[TaskResponse], "error": None, "result": {"f": "\udcff"}}), "field 'result' is not encodable"),
    (dumps({**GOOD[TaskResponse], "result": {"\ud800": 1}}), "field 'result' key is not encodable"),
    (dumps({**GOOD[TaskResponse], "attempt": 2**31}), "attempt must be within 1..2147483647"),
    (dumps({**GOOD[TaskResponse], "attempt": 2**70}), "field 'attempt' is outside 64-bit integers"),
    (dumps({**GOOD[TaskResponse], "started_at": 10**400}), "field 'started_at' is outside 64-bit integers"),
    (dumps({**GOOD[TaskResponse], "ended_at": float("inf")}), "field 'ended_at' is not a finite number"),
    (dumps({**GOOD[TaskResponse], "experiment_id": "a/b"}), "invalid experiment_id 'a/b'"),
    (dumps({**GOOD[TaskResponse], "task": "x" * 65}), "invalid task"),
    (dumps({**GOOD[TaskResponse], "worker": "w\n"}), "invalid worker"),
    (dumps({**GOOD[TaskResponse], "outcome": "failure", "result": None, "error": "e" * 513}),
     "error is longer than 512"),
    (dumps({**GOOD[TaskResponse], "result": {"x": "y" * 300_000}}), "bytes, more than 262144"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_what_a_store_could_not_take_is_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        TaskResponse.decode(raw)
    assert reason in caught.value.reason


def test_request_epoch_and_notice_ids_are_bounded() -> None:
    with pytest.raises(MalformedMessage, match="epoch must be within"):
        TaskRequest.decode(dumps({**GOOD[TaskRequest], "epoch": -1}))
    with pytest.raises(MalformedMessage, match="invalid kind"):
        TaskRequest.decode(dumps({**GOOD[TaskRequest], "kind": "k" * 65}))
    with pytest.raises(MalformedMessage, match="invalid experiment_id"):
        SubmissionNotice.decode(b'{"v":1,"experiment_id":""}')


@FUZZ
@given(data=st.data())
def test_any_pack_of_bodies_unpacks_to_storable_responses_and_reasoned_rejects(data: st.DataObject) -> None:
    """A pack whose items are arbitrary (bodies of every decoder's strategy, bytes made JSON where they are): every
    item comes back as a storable response or a Rejected with a one-line reason and a body that is JSON again."""
    items = [raw for raw in data.draw(st.lists(bodies(TaskResponse), min_size=1, max_size=5)) if _is_json(raw)]
    raw = b"[" + b",".join(items) + b"]"
    try:
        unpacked = unpack_responses(raw)
    except MalformedMessage as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert len(unpacked) == len(items)
    for item in unpacked:
        if isinstance(item, Rejected):
            assert item.reason.startswith("pack item ") and "\n" not in item.reason
            json.loads(item.body)
            item.reason.encode("utf-8")
        else:
            assert_storable(item)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True
