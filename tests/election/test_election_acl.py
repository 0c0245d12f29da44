"""Digest ACLs against a real ensemble: only the owner identity may change an election's znodes."""

import time
import uuid

import pytest
from election_harness import first_elected
from kazoo.exceptions import NoAuthError

from election import EpochCounter, make_client, secure_tree

AUTH = ("digest", "haorch-test:s3cret")


@pytest.fixture
def paths() -> tuple[str, str]:
    """Under a parent of their own: owned by AUTH once created, it would lock the other tests' clients out."""
    base = f"/election-acl-tests/{uuid.uuid4().hex[:12]}"
    return f"{base}/election", f"{base}/epoch"


@pytest.fixture
def outsider(zk):
    """A client with no credentials: any local process that reaches the ensemble."""
    client = make_client(zk.hosts, 2.0, "outsider")
    yield client
    client.stop()
    client.close()


def test_an_unauthenticated_client_cannot_delete_the_lock_or_lower_the_epoch(make_candidate, outsider, paths):
    cands = [make_candidate(f"acl-{i}", auth=AUTH) for i in range(2)]
    leader, _, epoch = first_elected(cands, 0.0, 5.0)
    lock_node = leader.election.lock_node
    election_path, epoch_path = paths

    with pytest.raises(NoAuthError):
        outsider.delete(lock_node)
    with pytest.raises(NoAuthError):
        outsider.set(epoch_path, b"0")
    with pytest.raises(NoAuthError):
        outsider.delete(epoch_path)
    with pytest.raises(NoAuthError):  # jumping the queue with a lock node of its own
        outsider.create(f"{election_path}/forged-lock-", b"", sequence=True)
    assert outsider.get(epoch_path)[0] == str(epoch).encode()  # reading is harmless, and allowed
    assert leader.election.is_leader and leader.election.epoch == epoch

    started = time.monotonic()  # the owner identity still elects and hands over
    assert leader.election.resign() is True
    other = next(c for c in cands if c is not leader)
    successor, _, new_epoch = first_elected([other], started, 5.0)
    assert successor is other and new_epoch > epoch


def test_secure_tree_takes_over_znodes_created_without_an_acl(zk, outsider):
    root = f"/election-open-tests/{uuid.uuid4().hex[:12]}"  # a parent anyone may create under
    election_path, epoch_path = f"{root}/election", f"{root}/epoch"
    outsider.create(epoch_path, b"5", makepath=True)  # as an older version left them: open to anyone
    outsider.create(f"{election_path}/lock-0000000001", b"", makepath=True)
    owner = make_client(zk.hosts, 2.0, "owner", auth=AUTH)
    thief = make_client(zk.hosts, 2.0, "thief", auth=("digest", "haorch-test:a-guess"))
    try:
        assert secure_tree(owner, root) == 4  # root, epoch, election, the lock node
        assert secure_tree(owner, root) == 0  # idempotent
        with pytest.raises(NoAuthError):
            outsider.set(epoch_path, b"0")
        with pytest.raises(NoAuthError):
            outsider.delete(f"{election_path}/lock-0000000001")
        assert EpochCounter(owner, epoch_path).next() == 6
        with pytest.raises(NoAuthError):  # a wrong password is another identity: it cannot take them back
            secure_tree(thief, root)
    finally:
        for client in (owner, thief):
            client.stop()
            client.close()
