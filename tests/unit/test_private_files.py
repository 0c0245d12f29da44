"""Files holding secrets are 0600 from their creation, whatever the umask; old secrets files gain new passwords."""

import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from node.config import Config, Secrets
from node.private_files import write_private
from node.stack.neo4j import Neo4j


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)  # a file created with the default mode would be world-readable (0666)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def created_modes(monkeypatch) -> list[int]:
    """The mode of each file written through write_private the moment it exists, before a byte is written."""
    seen: list[int] = []
    real_fdopen = os.fdopen

    def spy(fd, *args, **kwargs):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", spy)
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_creates_the_file_0600_under_a_permissive_umask(tmp_path, permissive_umask, created_modes):
    target = tmp_path / "rabbitmq.conf"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, "default_pass = s3cret\n")
    assert created_modes == [0o600]
    assert mode(target) == 0o600
    assert target.read_text() == "default_pass = s3cret\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rabbitmq.conf"]  # no temporary file left behind


def test_write_private_keeps_a_narrower_mode_and_refuses_a_wider_one(tmp_path, permissive_umask):
    cookie = tmp_path / ".erlang.cookie"
    write_private(cookie, "COOKIE", mode=0o400)
    assert mode(cookie) == 0o400
    with pytest.raises(ValueError, match="others"):
        write_private(tmp_path / "x", "secret", mode=0o644)


def test_secrets_file_is_created_0600(tmp_path, permissive_umask, created_modes):
    made = Secrets.load_or_create(tmp_path / "home")
    path = tmp_path / "home" / "secrets.json"
    assert created_modes == [0o600]
    assert mode(path) == 0o600
    stored = json.loads(path.read_text())
    assert stored == made.__dict__
    assert len({value for value in stored.values()}) == len(fields(Secrets))  # every password its own
    assert Secrets.load_or_create(tmp_path / "home") == made


def test_an_older_secrets_file_gains_the_new_passwords_and_keeps_its_own(tmp_path, permissive_umask):
    home = tmp_path / "home"
    home.mkdir()
    old = {"rabbit_password": "r", "mysql_password": "m", "neo4j_password": "n"}
    (home / "secrets.json").write_text(json.dumps(old))
    (home / "secrets.json").chmod(0o600)
    loaded = Secrets.load_or_create(home)
    assert (loaded.rabbit_password, loaded.mysql_password, loaded.neo4j_password) == ("r", "m", "n")
    assert loaded.zookeeper_password and loaded.worker_mysql_password and loaded.worker_rabbit_password
    assert json.loads((home / "secrets.json").read_text()) == loaded.__dict__
    assert mode(home / "secrets.json") == 0o600


def test_concurrent_first_loads_agree_on_every_password(tmp_path):
    home = tmp_path / "home"
    found: list[Secrets] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        found.append(Secrets.load_or_create(home))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(found) == 8 and len(set(found)) == 1


def test_the_neo4j_password_file_is_created_0600(tmp_path, permissive_umask, created_modes):
    service = Neo4j(Config(home=tmp_path))
    service.prepare()
    assert created_modes == [0o600, 0o600]  # secrets.json, then the password file
    assert mode(service.password_file) == 0o600
