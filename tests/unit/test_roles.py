"""Which role may take which action: the whole matrix, read from the table here rather than from REQUIRED."""

from __future__ import annotations

import getpass

import pytest

from node.access.roles import REQUIRED, Action, Principal, Role, allows, local_principal, role_named
from node.errors import UsageError

VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN
#: action -> the roles that may take it
MATRIX = {
    Action.READ: {VIEWER, OPERATOR, ADMIN},
    Action.SUBMIT: {OPERATOR, ADMIN},
    Action.CANCEL: {OPERATOR, ADMIN},
    Action.RETRY: {OPERATOR, ADMIN},
    Action.REGISTER: {ADMIN},
    Action.TOKENS: {ADMIN},
    Action.AUDIT: {OPERATOR, ADMIN},
    Action.GC: {ADMIN},
    Action.POOLS: {ADMIN},
}


def test_the_matrix_covers_every_action() -> None:
    assert set(MATRIX) == set(Action) == set(REQUIRED)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", list(Role))
def test_allows(role: Role, action: Action) -> None:
    assert allows(role, action) is (role in MATRIX[action])
    assert Principal("someone", role).may(action) is (role in MATRIX[action])


def test_a_higher_role_allows_what_a_lower_one_does() -> None:
    for action in Action:
        allowed = [allows(r, action) for r in (VIEWER, OPERATOR, ADMIN)]
        assert allowed == sorted(allowed)


def test_role_named() -> None:
    assert role_named("operator") is Role.OPERATOR
    assert role_named(Role.ADMIN) is Role.ADMIN
    with pytest.raises(UsageError, match="unknown role 'root': one of viewer, operator, admin"):
        role_named("root")


def test_the_local_user_is_an_admin() -> None:
    me = local_principal()
    assert me == Principal(f"local:{getpass.getuser()}", Role.ADMIN)
    assert all(me.may(action) for action in Action)
