"""Hypothesis strategies for hostile input: arbitrary JSON (lone surrogates, huge numbers, infinities, wrong
types), message-shaped objects with one field replaced, API bodies. Shared by the decoder property tests and the
fuzzing of the real stack (importable from every test folder: tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from node.model.limits import MAX_ID_CHARS
from node.model.messages import StaticRequest, SubmissionNotice, TaskRequest, TaskResponse

#: an id no experiment has: well-formed messages about it are hostile, not harmful
NO_SUCH = "fuzz-no-such-experiment"

GOOD: dict[type, dict[str, Any]] = {
    TaskRequest: {"v": 1, "experiment_id": NO_SUCH, "task": "a", "kind": "job_submission", "executor": "noop",
                  "params": {"ms": "5"}, "timeout_s": 9.5, "attempt": 1, "epoch": 7, "dispatched_at": 1.5},
    TaskResponse: {"v": 1, "experiment_id": NO_SUCH, "task": "a", "attempt": 1, "outcome": "success",
                   "result": {}, "error": None, "worker": "worker-1", "started_at": 1.0, "ended_at": 2.0},
    SubmissionNotice: {"v": 1, "experiment_id": NO_SUCH},
}
GOOD[StaticRequest] = {k: v for k, v in GOOD[TaskRequest].items() if k not in ("attempt", "epoch", "dispatched_at")}

#: the message of issue 12 that stopped every replica: valid JSON, valid UTF-8 bytes, a lone surrogate as its id
POISON = (b'{"v":1,"experiment_id":"\\ud800","task":"a","attempt":1,"outcome":"success","result":{},'
          b'"error":null,"worker":"w","started_at":1.0,"ended_at":2.0}')

# every code point, lone surrogates included (JSON escapes them as "\ud800", which json.loads accepts)
text = st.text(st.characters(exclude_categories=()), max_size=80)
scalars = (st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False) | text
           | st.sampled_from(["", "exp-1", "a/b", "\ud800", "x" * (MAX_ID_CHARS + 1), "tab\there", "success"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=20)


def dumps(value: Any) -> bytes:
    """JSON as a client could send it: infinities as 1e999 (which json.loads reads back as inf)."""
    raw = json.dumps(value, allow_nan=True)
    return raw.replace("-Infinity", "-1e999").replace("Infinity", "1e999").encode()


def message_shaped(decoder: type) -> st.SearchStrategy[bytes]:
    """A good message of ``decoder`` with one field replaced by, or one unknown field set to, any JSON value."""
    good = GOOD[decoder]
    return st.builds(lambda key, value: dumps({**good, key: value}), st.sampled_from([*good, "extra"]), json_values)


def bodies(decoder: type) -> st.SearchStrategy[bytes]:
    """Anything a queue of ``decoder`` messages could receive: bytes, any JSON, message-shaped JSON."""
    return st.one_of(st.binary(max_size=300), json_values.map(dumps), message_shaped(decoder))


def api_bodies() -> st.SearchStrategy[bytes]:
    """Bodies of POST /api/experiments: bytes, any JSON, submit-shaped objects with hostile values."""
    submit = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["nosuchtype", "Chain", "", "a/b"]) | json_values,
        "experiment_id": st.sampled_from(["", "a/b", "\ud800", "x" * 65]) | json_values,
        "params": st.dictionaries(text, json_values, max_size=4) | json_values,
        "extra": json_values,
    })
    return st.one_of(st.binary(max_size=300), json_values.map(dumps), submit.map(dumps))
