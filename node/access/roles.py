"""Roles and the actions each one allows: declared here once.

A role allows what the roles below it allow: ``viewer`` reads, ``operator`` also submits, cancels and retries
experiments, ``admin`` also registers templates and manages tokens. ``/metrics``, ``/healthz`` and ``/readyz``
need no token.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from enum import StrEnum

from node.errors import UsageError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def role_named(name: Role | str) -> Role:
    """The role called ``name``; UsageError naming the roles when there is none."""
    try:
        return Role(name)
    except ValueError:
        raise UsageError(f"unknown role {name!r}: one of {', '.join(Role)}") from None


class Action(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    CANCEL = "cancel"
    RETRY = "retry"
    REGISTER = "register"
    TOKENS = "tokens"
    AUDIT = "audit"  # read the audit log: it names every token holder and what they did
    GC = "gc"  # delete finished experiments past their retention by hand
    POOLS = "pools"  # set or delete concurrency pools


#: the least role that may take each action
REQUIRED: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.SUBMIT: Role.OPERATOR,
    Action.CANCEL: Role.OPERATOR,
    Action.RETRY: Role.OPERATOR,
    Action.REGISTER: Role.ADMIN,
    Action.TOKENS: Role.ADMIN,
    Action.AUDIT: Role.OPERATOR,
    Action.GC: Role.ADMIN,
    Action.POOLS: Role.ADMIN,
}


def allows(role: Role, action: Action) -> bool:
    """True when ``role`` may take ``action``."""
    return _RANK[role] >= _RANK[REQUIRED[action]]


def refusal(who: Principal, action: Action) -> str | None:
    """Why ``who`` may not take ``action`` (one line), None when it may."""
    if who.may(action):
        return None
    return f"{action} needs role {REQUIRED[action]}, {who.name!r} has {who.role}"


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a token's name and role, or a local CLI user (``local:<user>``, any action: it holds
    the stores' credentials already)."""

    name: str
    role: Role

    def may(self, action: Action) -> bool:
        return allows(self.role, action)


def local_principal() -> Principal:
    """The user running the CLI on this machine: ``local:<unix user>``, as an admin."""
    return Principal(f"local:{getpass.getuser()}", Role.ADMIN)
