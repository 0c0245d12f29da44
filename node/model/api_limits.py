"""The limits of what users submit and list (API, CLI), declared once: the HTTP API, the CLI and ``submit_many`` all
check against these, and README's API section lists them.

Params are stored as JSON in MariaDB's ``experiments.params`` (``TEXT``: 65,535 bytes); the total limit keeps
every accepted submit far below it, so no row is ever cut short::

    check_params_size({"ms": "20"})        # UsageError (exit 2 / HTTP 400) naming the limit that is exceeded
    encode_params({"ms": "20"})            # the stored form, '{"ms": "20"}'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from node.errors import UsageError
from node.model.limits import text_problem

REQUEST_BODY_MAX_BYTES = 64 * 1024  # POST /api/experiments; larger bodies get 413 before they are read
PARAMS_MAX_KEYS = 32
PARAM_KEY_MAX_CHARS = 64
PARAM_VALUE_MAX_CHARS = 4096
PARAMS_MAX_BYTES = 16 * 1024  # of encode_params(); MariaDB's TEXT column holds 65,535
LIST_DEFAULT_LIMIT = 100  # experiments per page of a listing
LIST_MAX_LIMIT = 1000
SUBMIT_BATCH_MAX = 1000  # experiment ids of one POST /api/experiments/batch (one MariaDB, one Neo4j transaction)

PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # whole names: fullmatch
PARAM_NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or '_'"


def encode_params(params: Mapping[str, object]) -> str:
    """The form stored in ``experiments.params`` (ASCII JSON, sorted keys): its length is what the column holds."""
    return json.dumps(params, sort_keys=True)


def check_params_size(params: Mapping[str, object]) -> None:
    """UsageError with one line naming the param and the limit, unless ``params`` is within every limit: at most
    :data:`PARAMS_MAX_KEYS` keys, each a name of at most :data:`PARAM_KEY_MAX_CHARS` characters, each value a string
    of at most :data:`PARAM_VALUE_MAX_CHARS` characters of Unicode text, :data:`PARAMS_MAX_BYTES` in all."""
    if len(params) > PARAMS_MAX_KEYS:
        raise UsageError(f"too many params: {len(params)} (limit {PARAMS_MAX_KEYS})")
    for key, value in params.items():
        if not isinstance(key, str) or not PARAM_NAME_RE.fullmatch(key):
            raise UsageError(f"bad param name {_show(key)}: {PARAM_NAME_RULE}")
        if len(key) > PARAM_KEY_MAX_CHARS:
            raise UsageError(f"param name {_show(key)} is {len(key)} characters (limit {PARAM_KEY_MAX_CHARS})")
        if not isinstance(value, str):
            raise UsageError(f"param {key!r} must be a string, got {type(value).__name__}")
        if len(value) > PARAM_VALUE_MAX_CHARS:
            raise UsageError(f"param {key!r} is {len(value)} characters (limit {PARAM_VALUE_MAX_CHARS})")
        if text_problem(value, f"param {key!r}"):
            raise UsageError(f"param {key!r} is not Unicode text (a lone surrogate?)")
    size = len(encode_params(params))
    if size > PARAMS_MAX_BYTES:
        raise UsageError(f"params are {size} bytes encoded (limit {PARAMS_MAX_BYTES})")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
