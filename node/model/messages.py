"""Wire formats: compact UTF-8 JSON objects, each with ``"v": 1``, decoded strictly.

``submit`` stores a :class:`StaticRequest` (the binary scheduling request) on every Neo4j task node; the leader
turns it into a :class:`TaskRequest` on ``haorch.requests`` by adding the attempt, its epoch and the time.
Workers answer with :class:`TaskResponse` objects on ``haorch.responses``, several to a message (a JSON array:
:func:`pack_responses`, :func:`unpack_responses`); ``submit`` also publishes a
:class:`SubmissionNotice` on ``haorch.submissions`` so the leader dispatches the roots at once::

    blob = static_request_bytes("exp-1", template.task("stage_in"), {"ms": "50"})
    body = TaskRequest.from_static(blob, attempt=1, epoch=7, dispatched_at=time.time()).encode()
    TaskRequest.decode(body)   # MalformedMessage(reason) on anything unexpected

Decoding rejects what is not UTF-8 JSON, not an object, of an unknown version, or has a missing, ill-typed
or unknown field, by raising :class:`~node.errors.MalformedMessage` with a short ``reason``; so is anything a
store could not take (``node/model/limits.py``): a message over ``MAX_MESSAGE_BYTES``, a string that is not
encodable as UTF-8 (JSON accepts ``"\\ud800"``), a number that is not finite or outside its column, nesting deeper
than ``MAX_NESTING``, an id that is not 1-64 printable characters. A decoded message never makes a store fail.

Params: :func:`static_request_bytes` applies the merge rule of ``node/model/template.py`` (declared defaults,
then the task's params, then the experiment's values, which submit checked against what the template declares).
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, fields
from functools import cache
from typing import Any, ClassVar, Literal, Self, cast, get_args, get_origin, get_type_hints

from node.errors import MalformedMessage
from node.model.limits import (
    BIGINT_MAX,
    INT_MAX,
    MAX_ERROR_CHARS,
    MAX_MESSAGE_BYTES,
    id_problem,
    name_problem,
    value_problem,
)
from node.model.template import TaskSpec

VERSION = 1
Outcome = Literal["success", "failure", "waiting"]
MAX_RECHECK_S = 3600.0  # the longest a waiting attempt may ask the leader to wait before checking again
RESPONSES_PER_MESSAGE = 50  # a worker's pack of responses; the leader's batch counts responses, not messages

_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object"}


class _Message:
    """JSON encoding and strict decoding for a dataclass whose fields are JSON values."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on each message class

    def encode(self) -> bytes:
        """Compact UTF-8 JSON with the version field first."""
        body = {"v": VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        """The message in ``raw``; :class:`MalformedMessage` if it is not exactly one."""
        data = _load_json(raw)
        if not isinstance(data, dict):
            raise MalformedMessage(f"not a JSON object but {_json_type(data)}")
        return cls.from_object(data)

    @classmethod
    def from_object(cls, data: dict[str, Any]) -> Self:
        """The message a decoded JSON object holds; MalformedMessage if it is not one."""
        version = data.get("v")
        if version is None:
            raise MalformedMessage("missing field 'v'")
        if version != VERSION or isinstance(version, bool):
            raise MalformedMessage(f"unknown version {version!r:.80}")
        checkers = _checkers(cast(type, cls))  # mypy does not take type[Self] as Hashable for the cache
        for key in data:
            if key not in checkers and key != "v":
                raise MalformedMessage(f"unknown field {key!r:.80}")
        values = {}
        for name, (check, required) in checkers.items():
            if name in data:
                values[name] = check(name, data[name])
            elif required:
                raise MalformedMessage(f"missing field {name!r}")
        message = cls(**values)
        problem = message._problem()
        if problem:
            raise MalformedMessage(problem)
        return message

    def _problem(self) -> str | None:
        """A rule across fields that the decoded message breaks, if any."""
        return None


@dataclass(frozen=True)
class StaticRequest(_Message):
    """What a task will run, fixed at submit: the ``request`` bytes on the Neo4j task node."""

    experiment_id: str
    task: str
    kind: str
    executor: str
    params: dict[str, Any]
    timeout_s: float

    def _problem(self) -> str | None:
        if self.timeout_s <= 0:
            return f"timeout_s must be > 0, got {self.timeout_s}"
        return (id_problem(self.experiment_id, "experiment_id") or id_problem(self.task, "task")
                or name_problem(self.kind, "kind") or name_problem(self.executor, "executor"))


@dataclass(frozen=True)
class TaskRequest(StaticRequest):
    """One attempt of a task, as the leader publishes it to ``haorch.requests``.

    ``undo`` marks no attempt but a request to reverse what the task's executor started outside haorch (cancel its
    SLURM jobs) because its experiment was cancelled or failed: a worker runs the executor's undo, which must be
    idempotent, without a ledger claim and without a response."""

    attempt: int
    epoch: int
    dispatched_at: float
    undo: bool = False

    @staticmethod
    def wire_from_static(blob: bytes, attempt: int, epoch: int, dispatched_at: float) -> bytes:
        """The encoded request for a stored scheduling request, without decoding it: ``blob`` is a JSON object
        written by :meth:`StaticRequest.encode`, so the three dispatch fields are appended before its ``}``
        (equal to ``from_static(...).encode()`` up to key order; the leader's hot path)."""
        if not blob.endswith(b"}"):
            raise MalformedMessage("stored request is not a JSON object")
        extra = f',"attempt":{int(attempt)},"epoch":{int(epoch)},"dispatched_at":{float(dispatched_at)!r}}}'
        return bytes(blob[:-1]) + extra.encode()

    @classmethod
    def from_static(cls, blob: bytes, attempt: int, epoch: int, dispatched_at: float, undo: bool = False) -> Self:
        """The wire request for attempt ``attempt`` of the stored scheduling request ``blob`` (or its undo)."""
        static = StaticRequest.decode(blob)
        return cls(**vars(static), attempt=attempt, epoch=epoch, dispatched_at=dispatched_at, undo=undo)

    def _problem(self) -> str | None:
        return (_range_problem("attempt", self.attempt, 1, INT_MAX)
                or _range_problem("epoch", self.epoch, 0, BIGINT_MAX) or super()._problem())


@dataclass(frozen=True)
class TaskResponse(_Message):
    """The outcome of one attempt, as a worker publishes it to ``haorch.responses``.

    A success has no ``error``; a failure has one (and ``result`` is what the executor returned, if anything).
    ``replayed`` marks a response rebuilt from the execution ledger for a redelivered request; ``lost`` a failure
    that is no fault of the task: its worker died or froze while holding it, and another worker abandoned the
    claim (``node/stores/ledger.py``). A *waiting* response has not ended the attempt: the task waits on something
    outside haorch (``waiting_on`` says what, one line) and asks to be checked again in ``recheck_after_s``.
    """

    experiment_id: str
    task: str
    attempt: int
    outcome: Outcome
    result: dict[str, Any] | None
    error: str | None
    worker: str
    started_at: float
    ended_at: float
    replayed: bool = False
    lost: bool = False
    recheck_after_s: float | None = None
    waiting_on: str | None = None

    def _problem(self) -> str | None:
        waiting = self.outcome == "waiting"
        if waiting != (self.recheck_after_s is not None) or waiting != (self.waiting_on is not None):
            return "recheck_after_s and waiting_on come with a waiting outcome, and only with it"
        if waiting and (self.error is not None or self.lost or self.replayed):
            return "a waiting response carries no error and is neither lost nor replayed"
        if self.recheck_after_s is not None and not 0 < self.recheck_after_s <= MAX_RECHECK_S:
            return f"recheck_after_s must be within (0, {MAX_RECHECK_S:g}], got {self.recheck_after_s}"
        if self.waiting_on is not None and len(self.waiting_on) > MAX_ERROR_CHARS:
            return f"waiting_on is longer than {MAX_ERROR_CHARS} characters"
        if self.outcome == "success" and self.error is not None:
            return "a success carries no error"
        if self.outcome == "success" and self.lost:
            return "a success is not lost"
        if self.outcome == "failure" and self.error is None:
            return "a failure needs an error"
        if self.error is not None and len(self.error) > MAX_ERROR_CHARS:
            return f"error is longer than {MAX_ERROR_CHARS} characters"
        return (_range_problem("attempt", self.attempt, 1, INT_MAX) or id_problem(self.experiment_id, "experiment_id")
                or id_problem(self.task, "task") or name_problem(self.worker, "worker"))


@dataclass(frozen=True)
class Rejected:
    """An item of a response pack that is not a response: its JSON (re-encoded) and why, for the dead letter."""

    body: bytes
    reason: str


def pack_responses(responses: Iterable[TaskResponse]) -> list[bytes]:
    """Message bodies for ``responses``: JSON arrays of up to RESPONSES_PER_MESSAGE encoded responses, each body
    within MAX_MESSAGE_BYTES (one persistent message per pack instead of per response: the broker's fsync,
    confirm, delivery and ack, and each side's AMQP framing, are paid once per pack)."""
    bodies: list[bytes] = []
    pack: list[bytes] = []
    size = 2
    for response in responses:
        encoded = response.encode()
        if pack and (len(pack) == RESPONSES_PER_MESSAGE or size + 1 + len(encoded) > MAX_MESSAGE_BYTES):
            bodies.append(b"[" + b",".join(pack) + b"]")
            pack, size = [], 2
        pack.append(encoded)
        size += len(encoded) + 1
    if pack:
        bodies.append(b"[" + b",".join(pack) + b"]")
    return bodies


def unpack_responses(raw: bytes) -> list[TaskResponse | Rejected]:
    """The responses of one message on ``haorch.responses``: a pack (:func:`pack_responses`) or one response object.
    MalformedMessage when the message as a whole is neither (not UTF-8 JSON, too long, an empty pack, a pack longer
    than MAX_MESSAGE_BYTES allows); an item of a pack that is not a valid response is a :class:`Rejected`, so that
    the other items are still used."""
    data = _load_json(raw)
    if isinstance(data, dict):
        return [TaskResponse.from_object(data)]
    if not isinstance(data, list):
        raise MalformedMessage(f"neither a response object nor a pack of them but {_json_type(data)}")
    if not data:
        raise MalformedMessage("an empty pack of responses")
    out: list[TaskResponse | Rejected] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            out.append(Rejected(_reencode(item), f"pack item {index}: not a JSON object but {_json_type(item)}"))
            continue
        try:
            out.append(TaskResponse.from_object(item))
        except MalformedMessage as exc:
            out.append(Rejected(_reencode(item), f"pack item {index}: {exc.reason}"))
    return out


def _reencode(value: Any) -> bytes:
    """``value`` (parsed JSON) as JSON again: ASCII, so that any string JSON accepted stays encodable."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class SubmissionNotice(_Message):
    """Published to ``haorch.submissions`` after a submit so the leader dispatches the roots at once."""

    experiment_id: str

    def _problem(self) -> str | None:
        return id_problem(self.experiment_id, "experiment_id")


def _range_problem(name: str, value: int, low: int, high: int) -> str | None:
    return None if low <= value <= high else f"{name} must be within {low}..{high}, got {value}"


def static_request_bytes(experiment_id: str, spec: TaskSpec, exp_params: dict[str, Any],
                         defaults: dict[str, Any] | None = None) -> bytes:
    """The scheduling request stored on a task node: the template's declared ``defaults``, overridden by the task's
    params, overridden by the experiment's."""
    return StaticRequest(
        experiment_id=experiment_id,
        task=spec.name,
        kind=spec.kind,
        executor=spec.executor,
        params={**(defaults or {}), **spec.params, **exp_params},
        timeout_s=spec.timeout_s,
    ).encode()


@cache
def _checkers(cls: type) -> dict[str, tuple[Callable[[str, Any], Any], bool]]:
    """Per field of ``cls``: a value checker compiled from its type hint, and whether the field is required
    (computed once per class: decoding runs thousands of times a second)."""
    hints = get_type_hints(cls)
    return {f.name: (_compile(hints[f.name]), f.default is MISSING) for f in fields(cls)}


def _load_json(raw: bytes) -> Any:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message is {len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("not UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MalformedMessage("not JSON") from None
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _compile(hint: Any) -> Callable[[str, Any], Any]:
    """A checker ``(name, value) -> value`` for type ``hint`` (ints count as numbers); MalformedMessage if not."""
    args = get_args(hint)
    if get_origin(hint) is Literal:
        def literal(name: str, value: Any) -> Any:
            if isinstance(value, str) and value in args:
                return value
            raise MalformedMessage(f"field {name!r} must be one of {', '.join(args)}, got {value!r:.80}")
        return literal
    nullable = get_origin(hint) is types.UnionType and type(None) in args
    if nullable:
        hint = next(arg for arg in args if arg is not type(None))
    base = get_origin(hint) or hint
    wanted = _JSON_NAMES[base] + (" or null" if nullable else "")

    def check(name: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        problem = value_problem(value, f"field {name!r}")
        if problem:
            raise MalformedMessage(problem)
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, base) and (base is bool or not isinstance(value, bool)):
            return value
        raise MalformedMessage(f"field {name!r} must be {wanted}, got {_json_type(value)}")
    return check


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names: dict[type, str] = {str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)
