"""API tokens: created with a role, listed, revoked, and checked on every API request.

A token is ``haorch_`` + 43 URL-safe characters (32 random bytes). MariaDB keeps only its sha256 hex
(``api_tokens.token_hash``; why a fast unsalted hash is right is said in ``node/stores/mysql_schema.py``) and its
first PREFIX_CHARS characters, which listings show so that a holder can tell which token is which.

A token name is never reused, not even after its token is revoked: audit rows name tokens, and one name must mean
one token for ever.

:meth:`Tokens.authenticate` caches what it finds, found or not, for ``cache_s`` (TOKEN_CACHE_S) in the process:
a revoked token stops working in the process that revoked it at once, and on every other node within
TOKEN_CACHE_S seconds. It marks a token's ``last_used_at`` at most once per TOUCH_EVERY_S, whatever the number of
nodes and requests.

Threads: one Tokens (and its cache) serves every thread of a process; its ``records`` is a callable that returns
the calling thread's :class:`Records` (a Records is not shared between threads), such as :func:`thread_records`.
A single-threaded caller (the CLI) may pass one Records instead.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from node.access.roles import Principal, Role, role_named
from node.config import Config
from node.errors import ConflictError, NotFoundError, UsageError
from node.stores.records import Records

TOKEN_PREFIX = "haorch_"
TOKEN_MAX_CHARS = 200  # longer is not a token: refused without a query
TOKEN_CACHE_S = 5.0  # how long a node may still accept a revoked token
TOKEN_CACHE_ENTRIES = 10_000  # then the oldest entry goes
TOUCH_EVERY_S = 60.0  # last_used_at is at most this stale
PREFIX_CHARS = 12  # "haorch_" and 5 random characters: enough to tell tokens apart, 226 random bits stay secret
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
DUPLICATE_KEY = 1062  # ER_DUP_ENTRY
LISTED = "name, role, prefix, created_at, created_by, revoked_at, revoked_by, last_used_at"
Rows = list[dict[str, Any]]


def token_hash(token: str) -> str:
    """What ``api_tokens.token_hash`` holds for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    """True for a string that may be a token (prefix, length, alphabet); anything else is refused unread."""
    body = token[len(TOKEN_PREFIX):]
    return (token.startswith(TOKEN_PREFIX) and 0 < len(token) <= TOKEN_MAX_CHARS and bool(body)
            and all(c in TOKEN_ALPHABET for c in body))


def thread_records(cfg: Config, retry_for_s: float = 10.0) -> Callable[[], Records]:
    """A callable that returns the calling thread's own Records (made on its first call in that thread)."""
    local = threading.local()

    def current() -> Records:
        if not hasattr(local, "records"):
            local.records = Records(cfg, retry_for_s=retry_for_s)
        return local.records
    return current


@dataclass(frozen=True)
class _Cached:
    principal: Principal | None
    until: float  # time.monotonic()


class Tokens:
    """The ``api_tokens`` table, and the process's cache of token checks (see the module docstring)."""

    def __init__(self, records: Records | Callable[[], Records], cache_s: float = TOKEN_CACHE_S,
                 cache_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        self._records: Callable[[], Records] = records if callable(records) else (lambda: records)
        self.cache_s = cache_s
        self.cache_entries = cache_entries
        self._cache: OrderedDict[str, _Cached] = OrderedDict()  # by token hash, oldest first
        self._lock = threading.Lock()

    def create(self, role: Role | str, name: str, created_by: str) -> dict[str, Any]:
        """A new token: ``{"token", "name", "role", "prefix", "created_at", "created_by"}``. The token itself is in
        this answer only. UsageError for a bad name or role, ConflictError for a name that was ever used. One
        insert: a crash leaves the token created or not, and a caller that never saw the token creates another
        under a new name (and revokes the first)."""
        role = role_named(role)
        if not NAME.fullmatch(name):
            raise UsageError(f"bad token name {name!r}: 1-64 characters of A-Z a-z 0-9 . _ @ -")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = {"name": name, "role": str(role), "prefix": token[:PREFIX_CHARS], "created_at": time.time(),
               "created_by": created_by}

        def work(cur: pymysql.cursors.Cursor) -> None:
            try:
                cur.execute("INSERT INTO api_tokens (name, role, token_hash, prefix, created_at, created_by) "
                            "VALUES (%s, %s, %s, %s, %s, %s)",
                            (name, row["role"], token_hash(token), row["prefix"], row["created_at"], created_by))
            except pymysql.err.IntegrityError as exc:
                if exc.args[:1] != (DUPLICATE_KEY,):
                    raise
                cur.execute("SELECT revoked_at FROM api_tokens WHERE name = %s", (name,))
                found = cur.fetchone()
                state = "a live token" if found is None or found[0] is None else "a revoked token"
                raise ConflictError(f"token name {name!r} is taken by {state}; names are never reused; "
                                    f"pick another") from None
        self._records().transaction(work)
        return {"token": token, **row}

    def list(self, include_revoked: bool = False) -> Rows:
        """Tokens oldest first, live ones only unless ``include_revoked``; never a token nor its hash."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"

        def work(cur: pymysql.cursors.Cursor) -> Rows:
            cur.execute(f"SELECT {LISTED} FROM api_tokens{where} ORDER BY id")
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
        return self._records().transaction(work)

    def revoke(self, name: str, by: str) -> dict[str, Any]:
        """Revoke the token called ``name``: its row with ``already_revoked`` (True, and the first revocation's
        time and author, when it was revoked before: revoking is idempotent). NotFoundError for an unknown name.
        This process stops accepting the token at once (but for a check that read the row before this commit),
        other processes within ``cache_s``."""
        now = time.time()

        def work(cur: pymysql.cursors.Cursor) -> tuple[dict[str, Any], str]:
            cur.execute(f"SELECT {LISTED}, token_hash FROM api_tokens WHERE name = %s FOR UPDATE", (name,))
            found = cur.fetchone()
            if found is None:
                raise NotFoundError(f"no token named {name!r} (`haorch token list --all` lists them)")
            columns = [d[0] for d in cur.description]
            row = dict(zip(columns, found, strict=True))
            hashed = row.pop("token_hash")
            row["already_revoked"] = row["revoked_at"] is not None
            if not row["already_revoked"]:
                cur.execute("UPDATE api_tokens SET revoked_at = %s, revoked_by = %s WHERE name = %s",
                            (now, by, name))
                row.update(revoked_at=now, revoked_by=by)
            return row, hashed
        row, hashed = self._records().transaction(work)
        with self._lock:
            self._cache.pop(hashed, None)
        return row

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for, or None (malformed, unknown or revoked). A malformed one costs no
        query; otherwise the answer comes from the cache when it is younger than ``cache_s``, else from MariaDB
        (DependencyError when it does not answer: nothing is cached then)."""
        if not well_formed(token):
            return None
        hashed = token_hash(token)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(hashed)
            if cached is not None and cached.until > now:
                return cached.principal
        principal = self._lookup(hashed)
        with self._lock:
            self._cache.pop(hashed, None)
            self._cache[hashed] = _Cached(principal, now + self.cache_s)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return principal

    def _lookup(self, hashed: str) -> Principal | None:
        """The live token with this hash, marking its use when the mark is older than TOUCH_EVERY_S (a conditional
        write, so concurrent nodes mark it once)."""
        def work(cur: pymysql.cursors.Cursor) -> Principal | None:
            cur.execute("SELECT id, name, role, last_used_at FROM api_tokens "
                        "WHERE token_hash = %s AND revoked_at IS NULL", (hashed,))
            found = cur.fetchone()
            if found is None:
                return None
            token_id, name, role, last_used_at = found
            now = time.time()
            if last_used_at is None or last_used_at < now - TOUCH_EVERY_S:
                cur.execute("UPDATE api_tokens SET last_used_at = %s WHERE id = %s "
                            "AND (last_used_at IS NULL OR last_used_at < %s)", (now, token_id, now - TOUCH_EVERY_S))
            return Principal(name, Role(role))
        return self._records().transaction(work)
